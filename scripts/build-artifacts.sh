#!/usr/bin/env bash
# What users install, built the way they build it and installed the way they install it (make artifacts).
#
# 1. A clean copy of the tree: the files git tracks or would track, so nothing ignored (no .venv, no compiled
#    modules left in place by `make compiled`) can stand in for something the sdist lacks.
# 2. `python -m build` in that copy: the sdist, then the compiled wheel built from the sdist in pip's isolated
#    build environment. The copy is then removed: every later step starts from the sdist alone.
# 3. From the same sdist, with isolation: the pure wheel (WHALERAY_PURE_PYTHON=1), and the wheel a machine
#    without a C compiler gets (CC names no program), which must be pure and say why in the build's output.
# 4. Each wheel into a fresh venv with its runtime dependencies only (.artifacts/<build>/runtime): `pip check`,
#    every module imports, `--version` names the build. The process tests start that venv's console script.
# 5. Each wheel with the `test` extra into a second venv (.artifacts/<build>/suite), whose pytest runs the suite
#    against the installed package (tests/conftest.py refuses to run if `router` resolves to the source tree).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
BUILD_TOOL=".venv/bin/python"  # the dev venv holds `build` (make artifacts depends on it)
out="$PWD/.artifacts"
rm -rf "$out"
mkdir -p "$out/dist" "$out/copy"

say() { echo "build-artifacts: $*"; }

# 1. The clean copy (a file deleted in the work tree but still tracked is skipped, with tar's warning).
git ls-files -z --cached --others --exclude-standard \
  | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$out/copy"

# 2. The sdist and the compiled wheel from it.
"$BUILD_TOOL" -m build --outdir "$out/dist" "$out/copy" >"$out/build-compiled.log" 2>&1 \
  || { tail -n 40 "$out/build-compiled.log"; say "FAILED: python -m build (see $out/build-compiled.log)"; exit 1; }
rm -rf "$out/copy"
sdist=$(echo "$out"/dist/whaleray_router-*.tar.gz)
compiled=$(echo "$out"/dist/whaleray_router-*-cp3*-linux_*.whl)
[ -f "$sdist" ] && [ -f "$compiled" ] || { ls "$out/dist"; say "FAILED: expected an sdist and a compiled wheel"; exit 1; }
say "sdist $(basename "$sdist"), compiled wheel $(basename "$compiled")"

# 3. The pure wheel, and the wheel of a machine with no compiler, both from the sdist.
pure_wheel() {  # DIR ENV...: build the wheel from the sdist into DIR with the given environment; print its path
  local dir=$1
  shift
  mkdir -p "$dir"
  env "$@" "$BUILD_TOOL" -m pip wheel --no-deps --verbose --wheel-dir "$dir" "$sdist" >"$dir/build.log" 2>&1 \
    || { tail -n 40 "$dir/build.log" >&2; say "FAILED: pip wheel $sdist with $*" >&2; exit 1; }
  echo "$dir"/whaleray_router-*-py3-none-any.whl
}
pure=$(pure_wheel "$out/dist/pure" WHALERAY_PURE_PYTHON=1)
[ -f "$pure" ] || { say "FAILED: WHALERAY_PURE_PYTHON=1 did not give a py3-none-any wheel"; exit 1; }
no_compiler=$(pure_wheel "$out/dist/no-compiler" CC=/nonexistent/cc)
[ -f "$no_compiler" ] || { say "FAILED: without a compiler the build was not pure"; exit 1; }
grep -q "whaleray-router: building the pure-Python fallback: no C compiler" "$out/dist/no-compiler/build.log" \
  || { say "FAILED: the build without a compiler did not say why it is pure"; exit 1; }
say "pure wheel $(basename "$pure"); without a compiler: pure, and the build said why"

# 4 and 5. The venvs.
install_build() {  # NAME WHEEL
  local name=$1 wheel=$2 runtime="$out/$1/runtime" suite="$out/$1/suite"
  "$PYTHON" -m venv "$runtime"
  "$runtime/bin/python" -m pip install --quiet "$wheel"
  "$runtime/bin/python" -m pip check
  # Isolated mode (-I): the source tree in the working directory must not stand in for the installed package.
  "$runtime/bin/python" -I - "$runtime" <<'EOF'
import importlib, pathlib, pkgutil, sys, router
assert pathlib.Path(router.__file__).is_relative_to(sys.argv[1]), router.__file__
for module in pkgutil.walk_packages(router.__path__, "router."):
    if not module.name.endswith(".__main__"):  # importing it would start the router
        importlib.import_module(module.name)
EOF
  "$runtime/bin/whaleray-router" --version | grep -q "($name build," \
    || { "$runtime/bin/whaleray-router" --version; say "FAILED: the $name wheel does not run the $name build"; exit 1; }
  "$PYTHON" -m venv "$suite"
  "$suite/bin/python" -m pip install --quiet "$wheel[test]"
  say "$name: $("$runtime/bin/whaleray-router" --version) in $runtime (runtime dependencies only); suite venv $suite"
}
install_build compiled "$compiled"
install_build pure "$pure"
