# Shared by scripts/demo and scripts/test: make a venv and install feedd into it (idempotent).
# The interpreter is FEEDD_PYTHON (a path or a name on PATH), else PYTHON, else python3. The
# default one's venv is ./.venv; FEEDD_PYTHON's is ./.venv-<its version> (./.venv-3.13.0), so
# several Pythons can each keep their own beside it. Sets $venv for the script that sources it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
if [ -n "${FEEDD_PYTHON:-}" ]; then
    python="$FEEDD_PYTHON"
    version="$("$python" -c 'import platform; print(platform.python_version())')"
    venv="$root/.venv-$version"
else
    python="${PYTHON:-python3}"
    venv="$root/.venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
stamp="$venv/.installed$extras"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root$extras"
    touch "$stamp"
fi
