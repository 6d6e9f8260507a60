# BEGIN M1_TABLE
M1_TABLE: dict[tuple[int, int, int], PackedGemvConfig | PackedConfig] = {
    # Qwen2.5-7B: qkv, o, gate_up, down (benchmarks/quant_kernels.py --gemv, NVIDIA H100 80GB HBM3)
    (37888, 3584, 4): PackedGemvConfig(128, 16, 1, 4, True, True, False, 0, 0, True, True),  # 34.77 us
    (3584, 18944, 4): PackedGemvConfig(128, 16, 2, 4, False, True, False, 0, 0, True, False),  # 22.70 us
    (4608, 3584, 4): PackedGemvConfig(128, 16, 1, 4, True, True, False, 0, 0, False, False),  # 7.81 us
    (3584, 3584, 4): PackedGemvConfig(128, 16, 2, 4, True, True, True, 0, 4, False, False),  # 7.39 us
}
# END M1_TABLE
