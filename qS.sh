source /work/s7/env.sh
for S in 2 3; do
  peftlab train --config /work/s7/outputs/SEARCH_SST2_lora/presets/sst-2-lora-r8.yaml --seed $S --out /work/s7/preset > /work/s7/logs/sst2-lora-r8-s$S.log 2>&1
done
echo done > /work/s7/logs/S-lora.status
