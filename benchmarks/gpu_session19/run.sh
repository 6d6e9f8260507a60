#!/bin/bash
# Session 19 (one H100 or H200 lent; compare only within one call). Carry [".whl", ".bench"].
# The int4 batch-1 GEMV with f16x2 products (PackedGemvConfig.half, kernels/quant/triton_packed_gemv.py): the K loop
# counted offline for sm_90 (benchmarks/kernels/sass_count.py) at 2.5-3.0 instructions a weight against the fp32
# path's 4.3-5.0, 62-80 registers against 128-255. Prediction (H100, where gate_up ran at 1.7 TB/s, issue-bound):
# gate_up 39.9 -> ~28-30 us, down 24.4 -> ~18-20, qkv / o ~7.5 -> ~6.5; AWQ 7B bs1 336 -> ~390-410 tok/s (H100).
# PART=1 (~6 min): the GEMV tests (the half ones new), then the M = 1 sweep of GEMV_CANDIDATES on the four 7B shapes,
#   saving the best table to $OUT/m1_table.py.
# PART=3 (~8 min): around PART=1's winners (gate_up: nsub 1 + prefetch + half + so_tile, 34.8 us; down: nsub 2, no
#   prefetch, half, 22.7 us): more split-K programs (down runs 224 programs on 132 SMs by the default rule, and the
#   half path's 62-95 registers leave room for more), xvec, 256-column sub-tiles; and half=2 (a scale per packed
#   row, no pass over x before the loop) on all four shapes; then AWQ bs1 with that sweep's table against the
#   committed one (8f159bc's), alternating. Prediction: down -> ~20 us with split 24-32; gate_up within 5%; qkv / o
#   with half=2 ~7.8 / 7.4 -> ~6.5-7; AWQ bs1 +3-5%.
# PART=2 (~5 min): AWQ 7B bs1 with the table in benchmarks/gpu_session19/m1_table.py (PART=1's, copied in) against
#   the committed one, alternating, two rounds.
. benchmarks/gpu_session9/common.sh
exec > >(tee $OUT/run19_${PART:-1}.txt) 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
if [ "${PART:-1}" = 1 ]; then
PYTHONPATH=$R timeout 150 python3 -m pytest -q -p no:cacheprovider -n 8 -rfs --tb=short \
  tests/gpu/test_quant_packed_kernels.py -k "gemv or m1" 2>&1 | grep -vE "^\s*$" | cut -c1-300 | tail -25
PYTHONPATH=$R timeout 260 python3 benchmarks/quant_kernels.py --gemv --deadline 220 --save-m1-table $OUT/m1_table.py \
  2>&1 | grep -v "^$" | tail -90
fi
if [ "${PART:-1}" = 3 ]; then
C='[PackedGemvConfig(128, 16, 1, 4, half=1, so_tile=True), PackedGemvConfig(128, 16, 1, 4, half=1, so_tile=True, split_k=3),
PackedGemvConfig(128, 16, 1, 4, half=1, so_tile=True, split_k=4), PackedGemvConfig(128, 16, 1, 4, half=1, so_tile=True, xvec=True),
PackedGemvConfig(256, 16, 1, 4, half=1, so_tile=True), PackedGemvConfig(128, 16, 2, 4, prefetch=False, half=1),
PackedGemvConfig(128, 16, 2, 4, prefetch=False, half=1, split_k=24), PackedGemvConfig(128, 16, 2, 4, prefetch=False, half=1, split_k=32),
PackedGemvConfig(128, 16, 1, 4, half=1, so_tile=True, split_k=32), PackedGemvConfig(128, 16, 1, 4, half=2, so_tile=True),
PackedGemvConfig(128, 16, 1, 4, prefetch=False, half=2, so_tile=True), PackedGemvConfig(128, 16, 2, 4, prefetch=False, half=2),
PackedGemvConfig(128, 16, 1, 4, half=2, so_tile=True, split_k=4), PackedGemvConfig(128, 16, 1, 4, half=2),
PackedGemvConfig(128, 16, 1, 4), PackedGemvConfig(128, 16, 2, 4, xvec=True, l2_ahead=4)]'
PYTHONPATH=$R timeout 250 python3 benchmarks/quant_kernels.py --gemv --deadline 215 --candidates "$C" \
  --save-m1-table $OUT/m1_table_b.py 2>&1 | grep -v "^$" | tail -80
m1_table_ab $OUT/m1_table_b.py swept-b 2
fi
if [ "${PART:-1}" = 4 ]; then   # the last round: half=2 with xvec, 32 splits with xvec (run after PART=3)
C='[PackedGemvConfig(128, 16, 1, 4, half=2, so_tile=True, xvec=True), PackedGemvConfig(128, 16, 1, 4, half=1, so_tile=True, xvec=True),
PackedGemvConfig(128, 16, 1, 4, half=2, so_tile=True), PackedGemvConfig(128, 16, 2, 4, prefetch=False, half=1, xvec=True, split_k=32),
PackedGemvConfig(128, 16, 1, 4, half=1, so_tile=True, xvec=True, split_k=32)]'
PYTHONPATH=$R timeout 150 python3 benchmarks/quant_kernels.py --gemv --deadline 120 --candidates "$C" \
  --save-m1-table $OUT/m1_table_c.py 2>&1 | grep -E "BEST|gemv:|sum of" | cut -c1-150
m1_table_ab $OUT/m1_table_c.py swept-c 2
fi
if [ "${PART:-1}" = 2 ]; then
m1_table_ab benchmarks/gpu_session19/m1_table.py swept 2
fi
