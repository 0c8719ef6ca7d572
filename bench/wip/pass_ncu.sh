#!/bin/bash
# per-instruction executed counts (SourceCounters) of the warp-specialised pass and the first kernel
for c in 1x32768 8x4096; do
  ncu --clock-control none --kernel-name regex:"chunk_state_output_ws|chunk_prep" --launch-skip 2 --launch-count 2 \
      --section SourceCounters --section LaunchStats -o $OUT/ncu_$c python bench/wip/gdn_once.py $c > $OUT/ncu_$c.log 2>&1
  ncu --import $OUT/ncu_$c.ncu-rep --page source --csv --print-source sass > $OUT/src_$c.csv 2>>$OUT/ncu_$c.log
  ls -la $OUT/src_$c.csv; tail -2 $OUT/ncu_$c.log
done
rm -f $OUT/*.ncu-rep
