# BEGIN M1_TABLE
M1_TABLE: dict[tuple[int, int, int], PackedGemvConfig | PackedConfig] = {
    # Qwen2.5-7B: qkv, o, gate_up, down (benchmarks/quant_kernels.py --gemv, NVIDIA H100 80GB HBM3)
    (37888, 3584, 4): PackedGemvConfig(128, 16, 1, 4, True, True, False, 0, 0, 2, True),  # 33.66 us
    (3584, 18944, 4): PackedGemvConfig(128, 16, 1, 4, True, True, True, 0, 0, 1, True),  # 17.55 us
    (4608, 3584, 4): PackedGemvConfig(128, 16, 1, 4, True, True, True, 0, 0, 1, True),  # 7.71 us
    (3584, 3584, 4): PackedGemvConfig(128, 16, 1, 4, True, True, True, 0, 0, 1, True),  # 7.26 us
}
# END M1_TABLE
