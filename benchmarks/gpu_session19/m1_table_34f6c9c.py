# BEGIN M1_TABLE
M1_TABLE: dict[tuple[int, int, int], PackedGemvConfig | PackedConfig] = {
    # Qwen2.5-7B: qkv, o, gate_up, down (benchmarks/quant_kernels.py --gemv, H200)
    (37888, 3584, 4): PackedGemvConfig(128, 16, 2, 4, False, True, False, 0),  # 36.41 us
    (3584, 18944, 4): PackedGemvConfig(128, 16, 2, 4, True, True, True, 0),  # 23.55 us
    (4608, 3584, 4): PackedGemvConfig(128, 16, 1, 4, True, True, False, 0),  # 7.39 us
    (3584, 3584, 4): PackedGemvConfig(128, 16, 1, 4, False, True, False, 0),  # 7.14 us
}
# END M1_TABLE
