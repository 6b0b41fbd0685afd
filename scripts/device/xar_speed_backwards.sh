#!/usr/bin/env bash
# xAR training/sampling speed vs the official model with each backward of the "cudnn" attention path.
# Usage: bash scripts/device/xar_speed_backwards.sh XAR_CHECKOUT
set -uo pipefail
for backward in reference cudnn; do
  echo "== cudnn backward: $backward"
  python3 -c "
import sys, runpy
import tokax.kernels
sys.modules['tokax.kernels.attention'].CUDNN_BACKWARD = '$backward'
sys.argv = ['xar_speed', '--xar', '$1', '--width', '768', '--depth', '8', '--heads', '12', '--batch', '64',
            '--sample_batch', '256', '--num_steps', '40', '--cfg', '2.7', '--dtype', 'bfloat16', '--iters', '10']
runpy.run_module('tokax.bench.xar_speed', run_name='__main__')
" 2>&1 | grep -v '^[IW]1'
done
