#!/usr/bin/env bash
# install_horovod.sh -- build/install Horovod (PyTorch + Gloo) into a Python env.
#
# Usage: scripts/install_horovod.sh [PYTHON]
#   PYTHON  interpreter of the target environment; default: <repo>/.venv/bin/python.
#           Works from any cwd (a relative PYTHON is taken relative to the cwd).
#
# Why this exists: horovod 0.28.1 (latest release) sets CMAKE_CXX_STANDARD 14 in
# CMakeLists.txt and horovod/torch/CMakeLists.txt, but PyTorch >= 2.1 headers
# need C++17 (fixed upstream in horovod PR #3998, never released).  So we
# download the sdist, patch both lines 14 -> 17 and build a wheel against the
# torch that is installed in the target env (--no-build-isolation).  The
# result is ABI-tied to that torch build, so it is cached under a key made of
# horovod version, torch version, python/ABI tag, platform and build variant.
#
# Steps:
#   1. horovod 0.28.1 importable as horovod.torch, built for the installed torch
#      -> print "already installed" and exit 0 (takes ~1-2 s; used by `make install`).
#   2. cached wheel for the current key present -> pip install it, verify.
#   3. otherwise: pip download sdist, patch, pip wheel, store in cache, install, verify.
#   4. verify: `horovodrun --check-build` must list PyTorch and Gloo as available.
#
# Environment:
#   PYROTRAIN_CACHE            cache root (default: ~/.cache/pyrotrain); wheels go to
#                              $PYROTRAIN_CACHE/wheels/<key>/, logs to $PYROTRAIN_CACHE/logs/.
#   PYROTRAIN_HOROVOD_REBUILD=1  ignore the installed copy and the cache; rebuild from
#                              source and replace the cache entry.
#   Horovod build variables are passed through and any value you set wins:
#     defaults: HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_TENSORFLOW=1
#               HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITHOUT_MPI=1
#     HOROVOD_WITHOUT_MPI=1 is NOT forced when you set HOROVOD_WITH_MPI=1 or any
#     HOROVOD_GPU_OPERATIONS / HOROVOD_GPU_* variable (e.g. HOROVOD_GPU_OPERATIONS=NCCL);
#     then horovod's own MPI handling applies (required / auto-detected).
#     HOROVOD_BUILD_ARCH_FLAGS  default: horovod's own (-mf16c -mavx -mfma); if this CPU
#                              lacks one of those, "-mtune=generic" is used instead.
#     MAKEFLAGS                 default: -j$(nproc).
#   Build-relevant HOROVOD_* variables are hashed into the cache key, so a GPU/MPI
#   build never reuses a CPU wheel.  The "already installed" check does not look
#   at them: use PYROTRAIN_HOROVOD_REBUILD=1 to switch variants in place.
#
# Needs: a C++ compiler + make (Debian: build-essential) and Python headers
# (Debian: python3-dev; pyenv/uv pythons ship them).  cmake>=3.13 and the
# Python build/runtime deps are pip-installed into the target env if missing.
set -euo pipefail

HVD_VERSION=0.28.1
REQUIRED_CHECKS=(PyTorch Gloo)
RUNTIME_DEPS=(cloudpickle psutil pyyaml packaging 'cffi>=1.4.0')
BUILD_DEPS=('setuptools>=64' wheel)

log() { printf '[install_horovod] %s\n' "$*"; }
die() { printf '[install_horovod] ERROR: %s\n' "$*" >&2; exit 1; }

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)

# --- resolve the interpreter (keep symlinks: a venv's python is one) --------
PYTHON=${1:-$REPO_ROOT/.venv/bin/python}
if [[ "$PYTHON" != */* ]]; then
    PYTHON=$(command -v -- "$PYTHON") || die "interpreter '${1:-}' not found on PATH"
fi
[[ -x "$PYTHON" ]] || die "interpreter '$PYTHON' does not exist or is not executable (create the venv first)"
PYTHON="$(cd -- "$(dirname -- "$PYTHON")" && pwd)/$(basename -- "$PYTHON")"

CACHE_ROOT=${PYROTRAIN_CACHE:-$HOME/.cache/pyrotrain}
WHEEL_CACHE=$CACHE_ROOT/wheels
LOG_DIR=$CACHE_ROOT/logs

# --- step 1: fast no-op check (single interpreter start) --------------------
# Prints: ok <torch> | missing <reason> | version <v> | torch-mismatch <built> <now>
installed_state() {
    "$PYTHON" - "$HVD_VERSION" 2>/dev/null <<'PY' || echo "missing interpreter-error"
import json, os, sys, warnings
warnings.simplefilter("ignore")
want = sys.argv[1]
try:
    import horovod
except Exception:
    print("missing not-installed"); sys.exit()
if getattr(horovod, "__version__", None) != want:
    print("version", getattr(horovod, "__version__", "?")); sys.exit()
try:
    import torch, horovod.torch  # noqa: F401
except Exception as e:
    print("missing import-failed:" + type(e).__name__); sys.exit()
try:
    with open(os.path.join(os.path.dirname(horovod.__file__), "metadata.json")) as f:
        built = json.load(f).get("pytorch")
except Exception:
    built = None
if built != torch.__version__:
    print("torch-mismatch", built, torch.__version__); sys.exit()
print("ok", torch.__version__)
PY
}

if [[ "${PYROTRAIN_HOROVOD_REBUILD:-0}" != 1 ]]; then
    read -r state detail _ < <(installed_state) || true
    if [[ "${state:-}" == ok ]]; then
        log "horovod $HVD_VERSION already installed for torch $detail in $PYTHON (nothing to do)"
        exit 0
    fi
fi

# --- slow path from here on -------------------------------------------------
START=$SECONDS
mkdir -p "$WHEEL_CACHE" "$LOG_DIR"
LOG=$LOG_DIR/horovod-$HVD_VERSION-$(date +%Y%m%d-%H%M%S)-$$.log
: >"$LOG"
# keep the 10 newest logs
# shellcheck disable=SC2012  # our own log names, no odd characters
{ ls -1t "$LOG_DIR"/horovod-*.log 2>/dev/null | tail -n +11 | while read -r old; do rm -f -- "$old"; done; } || true

fail() {
    printf '[install_horovod] ERROR: %s\n' "$1" >&2
    if [[ -s "$LOG" ]]; then
        local errs
        errs=$(grep -m 3 -A 4 -E 'CMake Error|: error:|fatal error:|^ERROR:' "$LOG" || true)
        if [[ -n "$errs" ]]; then
            printf '[install_horovod] first errors in the log:\n' >&2
            printf '%s\n' "$errs" | head -n 30 | sed 's/^/    /' >&2
        else
            printf '[install_horovod] last lines of the log:\n' >&2
            tail -n 25 "$LOG" | sed 's/^/    /' >&2
        fi
    fi
    printf '[install_horovod] full log: %s\n' "$LOG" >&2
    exit 1
}

TMP=""
BUILD_PID=""
cleanup() {
    [[ -n "$BUILD_PID" ]] && kill "$BUILD_PID" 2>/dev/null || true
    [[ -n "$TMP" && -d "$TMP" ]] && rm -rf -- "$TMP"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pip_() { "$PYTHON" -m pip --disable-pip-version-check --no-input "$@"; }
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "pip is not available in $PYTHON (try: $PYTHON -m ensurepip)"

# Serialise concurrent runs (e.g. parallel make) on the cache.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE_ROOT/.install_horovod.lock"
    if ! flock -n 9; then
        log "another install_horovod run holds $CACHE_ROOT/.install_horovod.lock; waiting"
        flock 9
        if [[ "${PYROTRAIN_HOROVOD_REBUILD:-0}" != 1 ]]; then
            read -r state detail _ < <(installed_state) || true
            if [[ "${state:-}" == ok ]]; then
                log "horovod $HVD_VERSION installed meanwhile for torch $detail"
                exit 0
            fi
        fi
    fi
fi

# Facts about the target interpreter: torch version, wheel tags, scripts dir.
mapfile -t info < <("$PYTHON" - <<'PY' 2>>"$LOG"
import sys, sysconfig
try:
    import torch
    tv = torch.__version__
except Exception:
    tv = "NONE"
impl = {"cpython": "cp", "pypy": "pp"}.get(sys.implementation.name, sys.implementation.name)
py = f"{impl}{sys.version_info[0]}{sys.version_info[1]}"
abi = py + (sysconfig.get_config_var("abiflags") or "")
plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
print(tv, f"{py}-{abi}", plat, sysconfig.get_path("scripts"), sysconfig.get_paths()["include"], sep="\n")
PY
)
[[ ${#info[@]} == 5 ]] || fail "could not query $PYTHON"
TORCH_VERSION=${info[0]} PY_TAG=${info[1]} PLAT_TAG=${info[2]} SCRIPTS_DIR=${info[3]} PY_INCLUDE=${info[4]}
[[ "$TORCH_VERSION" != NONE ]] || die "torch is not importable from $PYTHON; install the project's dependencies first"

case "${state:-}" in
    version)        log "found horovod $detail, want $HVD_VERSION; replacing it" ;;
    torch-mismatch) log "installed horovod was built for another torch; rebuilding/reinstalling for torch $TORCH_VERSION" ;;
    missing)        [[ "$detail" == not-installed ]] || log "horovod present but broken ($detail); reinstalling" ;;
esac

# --- build configuration (user settings win) --------------------------------
export HOROVOD_WITH_PYTORCH=${HOROVOD_WITH_PYTORCH:-1}
export HOROVOD_WITH_GLOO=${HOROVOD_WITH_GLOO:-1}
export HOROVOD_WITHOUT_TENSORFLOW=${HOROVOD_WITHOUT_TENSORFLOW:-1}
export HOROVOD_WITHOUT_MXNET=${HOROVOD_WITHOUT_MXNET:-1}
if [[ "${HOROVOD_WITHOUT_GLOO:-}" == 1 ]]; then die "HOROVOD_WITHOUT_GLOO=1 is set, but this project needs Gloo"; fi
gpu_requested=0
for v in $(compgen -e); do
    if [[ "$v" == HOROVOD_GPU* && -n "${!v}" ]]; then gpu_requested=1; fi
done
if [[ "${HOROVOD_WITH_MPI:-}" == 1 ]]; then
    if [[ "${HOROVOD_WITHOUT_MPI:-}" == 1 ]]; then die "both HOROVOD_WITH_MPI=1 and HOROVOD_WITHOUT_MPI=1 are set"; fi
elif [[ $gpu_requested == 0 ]]; then
    export HOROVOD_WITHOUT_MPI=${HOROVOD_WITHOUT_MPI:-1}
fi
if [[ -z "${HOROVOD_BUILD_ARCH_FLAGS:-}" && "$(uname -m)" == x86_64 && -r /proc/cpuinfo ]]; then
    cpu_flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
    for f in avx fma f16c; do
        if [[ " $cpu_flags " != *" $f "* ]]; then
            export HOROVOD_BUILD_ARCH_FLAGS="-mtune=generic"
            log "CPU lacks $f: building without horovod's -mavx/-mfma/-mf16c"
            break
        fi
    done
fi

# Cache key: horovod version, torch version (ABI), python/abi tag, platform,
# and the build variant (readable name + hash of the build-relevant env vars).
build_env=$(for v in $(compgen -e | LC_ALL=C sort); do
    if [[ "$v" =~ ^HOROVOD_(WITH|WITHOUT|GPU|CPU_OPERATIONS|BUILD_ARCH_FLAGS|DEBUG|CUDA|NCCL|ROCM|MPI|CCL|BUILD_CUDA) ]]; then
        printf '%s=%s\n' "$v" "${!v}"
    fi
done)
variant=cpu
if [[ $gpu_requested == 1 ]]; then variant=gpu; fi
if [[ "${HOROVOD_WITH_MPI:-}" == 1 ]]; then variant+=-mpi; fi
variant+=-gloo-$(printf '%s\n' "$build_env" | sha256sum | cut -c1-8)
KEY="horovod-${HVD_VERSION}_torch-${TORCH_VERSION}_${PY_TAG}-${PLAT_TAG}_${variant}"
KEY_DIR=$WHEEL_CACHE/$KEY
WHEEL_GLOB="horovod-${HVD_VERSION}-*.whl"

install_wheel() {  # $1 = wheel path
    if "$PYTHON" -c 'import importlib.metadata as m; m.version("horovod")' >/dev/null 2>&1; then
        pip_ uninstall -y horovod >>"$LOG" 2>&1 || fail "pip uninstall of the old horovod failed"
    fi
    pip_ install "$1" >>"$LOG" 2>&1 || fail "pip install $1 failed"
}

cached=""
if [[ "${PYROTRAIN_HOROVOD_REBUILD:-0}" != 1 && -d "$KEY_DIR" ]]; then
    cached=$(compgen -G "$KEY_DIR/$WHEEL_GLOB" | head -n1 || true)
fi

if [[ -n "$cached" ]]; then
    # --- step 2: install the cached wheel -----------------------------------
    log "installing cached wheel $cached"
    install_wheel "$cached"
else
    # --- step 3: build from the sdist ---------------------------------------
    log "no cached wheel for key $KEY; building horovod $HVD_VERSION from source"
    log "build log: $LOG"
    {
        echo "# install_horovod.sh $(date -Is) python=$PYTHON torch=$TORCH_VERSION key=$KEY"
        printf '%s\n' "$build_env"
    } >>"$LOG"

    # System prerequisites (not installed by us).
    CXX_BIN=${CXX:-$(command -v c++ || command -v g++ || true)}
    if [[ -z "$CXX_BIN" ]] || ! command -v "${CXX_BIN%% *}" >/dev/null 2>&1; then
        die "no C++ compiler found; install the Debian package 'build-essential' (or 'g++')"
    fi
    command -v make >/dev/null 2>&1 || die "'make' not found; install the Debian package 'build-essential' (or 'make')"
    [[ -f "$PY_INCLUDE/Python.h" ]] \
        || die "Python headers missing ($PY_INCLUDE/Python.h); install the Debian package 'python3-dev' matching $PYTHON"
    if [[ "$TORCH_VERSION" != *+cpu* && $gpu_requested == 0 ]]; then
        log "note: torch $TORCH_VERSION is not a +cpu build; building CPU-only collectives (set HOROVOD_GPU_OPERATIONS=NCCL for GPU)"
    fi

    # Python-side prerequisites, installed into the target env.
    log "checking build prerequisites (pip: cmake, setuptools, wheel, runtime deps)"
    export PATH="$SCRIPTS_DIR:$PATH"   # venv's cmake first; horovod's setup.py calls plain `cmake`
    cmake_ok=0
    if cmake_v=$(cmake --version 2>/dev/null | sed -n '1s/[^0-9]*\([0-9][0-9.]*\).*/\1/p') && [[ -n "$cmake_v" ]]; then
        [[ "$(printf '%s\n3.13\n' "$cmake_v" | sort -V | head -n1)" == 3.13 ]] && cmake_ok=1
    fi
    if [[ $cmake_ok == 0 ]]; then
        log "installing cmake into $SCRIPTS_DIR via pip"
        pip_ install 'cmake>=3.13' >>"$LOG" 2>&1 || fail "pip install cmake failed"
        hash -r
        cmake_v=$(cmake --version | sed -n '1s/[^0-9]*\([0-9][0-9.]*\).*/\1/p')
    fi
    # CMake >= 4 refuses cmake_minimum_required(< 3.5) in bundled third_party/gloo etc.
    export CMAKE_POLICY_VERSION_MINIMUM=${CMAKE_POLICY_VERSION_MINIMUM:-3.5}
    pip_ install "${BUILD_DEPS[@]}" "${RUNTIME_DEPS[@]}" >>"$LOG" 2>&1 || fail "pip install of build/runtime deps failed"
    log "using $(command -v cmake) ($cmake_v), $CXX_BIN, torch $TORCH_VERSION"

    TMP=$(mktemp -d "${TMPDIR:-/tmp}/install_horovod.XXXXXX")
    log "downloading horovod $HVD_VERSION sdist"
    pip_ download --no-binary :all: --no-deps "horovod==$HVD_VERSION" -d "$TMP/sdist" >>"$LOG" 2>&1 \
        || fail "pip download horovod==$HVD_VERSION failed (network / PyPI reachable?)"
    sdist=$(compgen -G "$TMP/sdist/horovod-$HVD_VERSION.tar.gz" | head -n1 || true)
    [[ -n "$sdist" ]] || fail "sdist horovod-$HVD_VERSION.tar.gz not found after download"
    tar -xzf "$sdist" -C "$TMP"
    SRC=$TMP/horovod-$HVD_VERSION
    [[ -d "$SRC" ]] || fail "unexpected sdist layout (no $SRC)"

    log "patching CMAKE_CXX_STANDARD 14 -> 17 (horovod PR #3998)"
    for f in CMakeLists.txt horovod/torch/CMakeLists.txt; do
        [[ -f "$SRC/$f" ]] || fail "patch failed: $f missing from the sdist"
        n14=$(grep -cE '^[[:space:]]*set\(CMAKE_CXX_STANDARD 14\)' "$SRC/$f" || true)
        [[ "$n14" == 1 ]] || fail "patch failed: expected exactly one 'set(CMAKE_CXX_STANDARD 14)' in $f, found $n14"
        sed -i -E 's/^([[:space:]]*)set\(CMAKE_CXX_STANDARD 14\)/\1set(CMAKE_CXX_STANDARD 17)/' "$SRC/$f"
        if grep -qE 'CMAKE_CXX_STANDARD 14' "$SRC/$f" || ! grep -qE '^[[:space:]]*set\(CMAKE_CXX_STANDARD 17\)' "$SRC/$f"; then
            fail "patch failed: $f still does not set CMAKE_CXX_STANDARD 17"
        fi
        echo "# patched $f: $(grep -nE 'set\(CMAKE_CXX_STANDARD 17\)' "$SRC/$f" | head -n1)" >>"$LOG"
    done

    export MAKEFLAGS=${MAKEFLAGS:--j$(nproc 2>/dev/null || echo 2)}
    log "building wheel (MAKEFLAGS=$MAKEFLAGS; typically 2-5 min on 2 cores)"
    (cd "$TMP" && exec "$PYTHON" -m pip --disable-pip-version-check --no-input \
        wheel --no-build-isolation --no-deps -v -w "$TMP/dist" "$SRC") >>"$LOG" 2>&1 &
    BUILD_PID=$!
    t0=$SECONDS; next=$((t0 + 60))
    while kill -0 "$BUILD_PID" 2>/dev/null; do
        sleep 2
        if (( SECONDS >= next )); then
            pct=$(grep -oE '^[[:space:]]*\[ *[0-9]+%\]' "$LOG" | tail -n1 | tr -d '[] ' || true)
            log "  ... still building ($((SECONDS - t0))s${pct:+, cmake at $pct})"
            next=$((SECONDS + 60))
        fi
    done
    if wait "$BUILD_PID"; then BUILD_PID=""; else BUILD_PID=""; fail "wheel build failed"; fi
    built=$(compgen -G "$TMP/dist/$WHEEL_GLOB" | head -n1 || true)
    [[ -n "$built" ]] || fail "build finished but produced no $WHEEL_GLOB"
    log "built $(basename "$built") in $((SECONDS - t0))s"

    # Store atomically under the cache key.
    mkdir -p "$KEY_DIR"
    # shellcheck disable=SC2086  # glob on purpose
    rm -f -- "$KEY_DIR"/$WHEEL_GLOB
    cp -- "$built" "$KEY_DIR/.$(basename "$built").tmp"
    mv -f -- "$KEY_DIR/.$(basename "$built").tmp" "$KEY_DIR/$(basename "$built")"
    {
        echo "built:   $(date -Is) on $(hostname)"
        echo "python:  $PYTHON ($PY_TAG $PLAT_TAG)"
        echo "torch:   $TORCH_VERSION"
        echo "cmake:   $cmake_v; CXX: $CXX_BIN; patch: CMAKE_CXX_STANDARD 14->17"
        echo "env:"; printf '%s\n' "$build_env" | sed 's/^/  /'
    } >"$KEY_DIR/BUILD_INFO.txt"
    log "cached wheel: $KEY_DIR/$(basename "$built")"

    log "installing wheel"
    install_wheel "$KEY_DIR/$(basename "$built")"
fi

# --- step 4: verify -----------------------------------------------------------
read -r state detail _ < <(installed_state) || true
if [[ "${state:-}" != ok ]]; then
    "$PYTHON" -c 'import horovod.torch' >>"$LOG" 2>&1 || true
    fail "horovod.torch is not usable after install ($state $detail)"
fi
HVDRUN=$SCRIPTS_DIR/horovodrun
[[ -x "$HVDRUN" ]] || fail "horovodrun not found at $HVDRUN"
check_out=$("$HVDRUN" --check-build 2>&1) || { printf '%s\n' "$check_out" >>"$LOG"; fail "horovodrun --check-build failed"; }
printf '%s\n' "$check_out" | sed '/^[[:space:]]*$/d; s/^/[install_horovod]   /'
for what in "${REQUIRED_CHECKS[@]}"; do
    grep -qE "\[X\][[:space:]]+${what}[[:space:]]*\$" <<<"$check_out" \
        || fail "horovodrun --check-build does not report $what as available (see above)"
done
log "OK: horovod $HVD_VERSION with PyTorch+Gloo installed for torch $TORCH_VERSION in $((SECONDS - START))s"
