#!/bin/sh
# bench/floor.py as an executable for compare.py's --feedd (or --before)
exec "$(dirname "$0")/../.venv/bin/python" "$(dirname "$0")/floor.py" "$@"
