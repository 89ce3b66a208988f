#!/usr/bin/env bash
# make sanitize: build dyninfer._C with AddressSanitizer + UndefinedBehaviorSanitizer into
# build/sanitize, then run the engine, plan, deploy and runtime tests against it (the package's Python
# files are linked into build/sanitize/pkg beside the sanitized extension, which PYTHONPATH puts
# first; python -P keeps the working directory, the source tree, off sys.path). Any sanitizer
# report aborts the test process and fails the target.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=build/sanitize
mkdir -p "$OUT"
DYNINFER_SANITIZE=1 "$PY" setup.py build_ext --build-lib "$OUT/lib" --build-temp "$OUT/tmp" > "$OUT/build.log" 2>&1 \
  || { tail -30 "$OUT/build.log"; exit 1; }
rm -rf "$OUT/pkg" && mkdir -p "$OUT/pkg/dyninfer"
for f in dyninfer/*; do
  case "$f" in *.so) ;; *) ln -s "$PWD/$f" "$OUT/pkg/$f" ;; esac
done
cp "$OUT"/lib/dyninfer/_C*.so "$OUT"/lib/dyninfer/_rt*.so "$OUT/pkg/dyninfer/"  # both extensions, sanitized
ASAN_LIB=$(gcc -print-file-name=libasan.so)
UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
# Python and torch allocate for the process lifetime: leak checking would only report them.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" PYTHONPATH="$PWD/$OUT/pkg" "$PY" -P -c \
  "import dyninfer, dyninfer._C as c; assert '$OUT/pkg' in dyninfer.__file__, dyninfer.__file__; print('sanitized build:', c.__file__)"
LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" PYTHONPATH="$PWD/$OUT/pkg" "$PY" -P -m pytest -x -q -p no:cacheprovider \
  tests/test_engine.py tests/test_plan_validation.py tests/test_plan_fuzz.py tests/test_deploy.py tests/test_runtime.py "$@"
