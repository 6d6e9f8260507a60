export PYTHONPATH=$PWD
d=$(mktemp -d); python3 -c "
import json,sys; sys.path.insert(0,'.bench/sb'); from workloads import qwen2_config; json.dump(qwen2_config('qwen2.5-7b'), open('$d/config.json','w'))"
python3 -X importtime -c "
from pagedllm.engine.core import create_engine_config
from pagedllm.config import EngineArgs
create_engine_config(EngineArgs(model='$d', load_format='dummy', skip_tokenizer_init=True, dtype='bfloat16'))" 2>$OUT/imp.txt
grep -n -E "fsdp$|sklearn$|candidate_generator|transformers.generation$|transformers.modeling_utils|accelerate$|distributed.tensor$|transformers.distributed" $OUT/imp.txt | head -20
