"""The miniature's test samples with their GT converted BY HAND from its table
(``merr1.components.data.mer_unibench_miniature.MINIATURE``) with the official rules
(docs/mer_unibench.md); shared by the reader tests and the recipe test."""

import numpy as np

F32 = float(np.float32(0.8)), float(np.float32(-0.3333))  # the two values the miniature stores as np.float32

# Hand-converted GT of every miniature test sample, in the official order.
EXPECTED = {
    "MER2023": [("sample_00000101", "worried"), ("sample_00000102", "happy"), ("sample_00000103", "neutral"),
                ("sample_00000104", "angry")],
    "MER2024": [("sample_00000066", "sad"), ("samplenew_00000007", "surprise"), ("samplenew_00012345", "worried"),
                ("samplenew_00000400", "neutral")],
    # MELD idx2emo: 0 anger, 1 joy, 2 sadness, 3 neutral, 4 disgust, 5 fear, 6 surprise
    "MELD": [("test_dia0_utt0", "neutral"), ("test_dia0_utt1", "joy"), ("test_dia17_utt4", "anger"),
             ("test_dia100_utt2", "surprise"), ("test_dia279_utt15", "sadness")],
    # IEMOCAP: Session 5 in whole_corpus order; idx2emo 0 happy, 1 sad, 2 neutral, 3 anger
    "IEMOCAPFour": [("Ses05F_impro01_F000", "anger"), ("Ses05M_script03_2_M045", "happy"),
                    ("Ses05F_script02_1a_F010", "sad"), ("Ses05M_impro07_M021", "neutral")],
    "CMUMOSI": [("k5Y_838nuGo_1", 1.4), ("yDtzw_Y-7RU_1", -2.2), ("1DmNV9C1hbY_3", 0.0), ("_dI--eQ6qVU_12", F32[0])],
    "CMUMOSEI": [("-MeTTeMJBNc_0", -1.3333333333333333), ("tO68uTk-T_E_1", 0.6666666666666666), ("YsMM_1R1vtw_0", 2.0),
                 ("24351_0", 0.0), ("--qXJuDtHPw_5", F32[1]), ("_q7DM8WkzAQ_3", 1.6666666666666667)],
    "SIMS": [("video_0003_0006", -0.8), ("video_0012_0003", 0.6), ("video_0020_0011", 0.0), ("video_0031_0002", -0.2)],
    "SIMSv2": [("video_0003_0006", -0.8), ("aqgy4_0008_00012_1", -0.6), ("video_0012_0003", 0.6),
               ("test12_00034", 1.0), ("video_0020_0011", 0.0), ("csbgs2_0005_00077", -1.0),
               ("video_0031_0002", -0.2), ("video_xjzw_00003", 0.2)],
    # subtitle_eng.csv order; ", ".join(string_to_list(openset)), [] -> neutral
    "OVMERDPlus": [("sample_00000011", "Happy, Excited"), ("samplenew3_00000002", "worried, sad, nervous"),
                   ("sample_00000500", "neutral"), ("samplenew3_00000042", "angry")],
}  # fmt: skip
# A few subtitles by hand: MER2024 reads the `chinese` column, OV-MERD+ `sentence`, an empty cell is "".
EXPECTED_SUBTITLES = {
    "MER2023": ("sample_00000102", "This is wonderful, we did it!"),
    "MER2024": ("samplenew_00000007", "什么？竟然是你"),
    "CMUMOSI": ("_dI--eQ6qVU_12", ""),
    "OVMERDPlus": ("sample_00000500", "The meeting is at ten."),
}
TASKS = {"MER2023": "basic", "MER2024": "basic", "MELD": "basic", "IEMOCAPFour": "basic", "CMUMOSI": "sentiment",
         "CMUMOSEI": "sentiment", "SIMS": "sentiment", "SIMSv2": "sentiment", "OVMERDPlus": "ovmerd"}  # fmt: skip
