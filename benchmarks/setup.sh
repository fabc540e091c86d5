#!/usr/bin/env bash
# Benchmark environment: .venv-bench with xai[bench] and the peers it is measured against.
#
# Xplique 2.0.2 pins tensorflow[and-cuda]<=2.20 on Linux: a plain install would replace
# TensorFlow and pull ~5 GB of CUDA wheels. It is installed with --no-deps plus the packages
# it actually imports. None of this touches .venv (runtime and tests).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
fi
py=.venv-bench/bin/python
$py -m pip install --quiet --upgrade pip
$py -m pip install --quiet -e ".[bench]"
$py -m pip install --quiet "tf-keras-vis==0.8.7" deprecated einops opencv-python-headless scikit-learn \
  "tensorflow-probability>=0.25" "tf-keras~=$($py -c 'import tensorflow as tf; print(tf.__version__.rsplit(".", 1)[0])').0"
$py -m pip install --quiet --no-deps "xplique==2.0.2"
$py -c "import xplique, tf_keras_vis; print('peers:', 'xplique', xplique.__version__, '/ tf-keras-vis', tf_keras_vis.__version__)"
