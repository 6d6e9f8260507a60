# BEGIN M1_TABLE
M1_TABLE: dict[tuple[int, int, int], PackedGemvConfig | PackedConfig] = {
    # Qwen2.5-7B: qkv, o, gate_up, down (benchmarks/quant_kernels.py --gemv, NVIDIA H200)
    (37888, 3584, 4): PackedGemvConfig(128, 16, 1, 4, True, True, True, 0, 0, 2, True, 1),  # 28.61 us
    (3584, 18944, 4): PackedGemvConfig(128, 16, 1, 4, True, True, True, 0, 0, 1, True, 1),  # 16.62 us
    (4608, 3584, 4): PackedGemvConfig(128, 16, 1, 4, True, True, True, 0, 0, 1, True, 1),  # 7.12 us
    (3584, 3584, 4): PackedGemvConfig(128, 16, 1, 4, True, True, True, 0, 0, 2, True, 1),  # 6.12 us
}
# END M1_TABLE
