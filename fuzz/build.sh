#!/usr/bin/env bash
# Build fuzz/plan_fuzzer and fuzz/artefact_fuzzer with clang (libFuzzer + ASan + UBSan) into build/fuzz.
#   bash fuzz/build.sh            (make fuzz runs it, then the fuzzer)
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX:-clang++}
if ! command -v "$CXX" > /dev/null; then
  echo "fuzz/build.sh: $CXX not found; install clang (apt-get install clang) or set CXX" >&2
  exit 2
fi
OUT=build/fuzz
mkdir -p "$OUT/obj"
FLAGS=(-std=c++17 -O2 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined
       -fno-sanitize-recover=undefined -Icsrc -Wno-unknown-pragmas)
objs=()
rt_objs=()
for src in csrc/kernels/*.cpp; do
  base=$(basename "$src" .cpp)
  isa=()
  case "$base" in  # clang ignores '#pragma GCC target': give the ISA units their flags
    conv_avx512) isa=(-mavx512f -mavx512vl -mavx512dq -mavx2 -mfma) ;;
    conv_avx2|conv_avx2_asm) isa=(-mavx2 -mfma) ;;
  esac
  obj="$OUT/obj/$base.o"
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ -n "$(find csrc/kernels -name '*.h' -newer "$obj")" ]; then
    echo "  CXX $src"
    "$CXX" "${FLAGS[@]}" "${isa[@]}" -c "$src" -o "$obj"
  fi
  objs+=("$obj")
done
for src in csrc/runtime/safetensors.cpp csrc/runtime/runtime.cpp; do
  base=$(basename "$src" .cpp)
  obj="$OUT/obj/rt_$base.o"
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ -n "$(find csrc -name '*.h' -newer "$obj")" ]; then
    echo "  CXX $src"
    "$CXX" "${FLAGS[@]}" -c "$src" -o "$obj"  # no OpenMP here (clang without libomp): one thread
  fi
  rt_objs+=("$obj")
done
"$CXX" "${FLAGS[@]}" -fsanitize=fuzzer fuzz/plan_fuzzer.cpp "${objs[@]}" -o "$OUT/plan_fuzzer"
"$CXX" "${FLAGS[@]}" -fsanitize=fuzzer fuzz/artefact_fuzzer.cpp "${rt_objs[@]}" "${objs[@]}" \
  -o "$OUT/artefact_fuzzer"
echo "built $OUT/plan_fuzzer and $OUT/artefact_fuzzer"
