"""`python -m dynexport sweep`: a model zoo in one command (docs/sweep.md).

plan (which scripts, with which arguments and options; what a result depends on), run (one
process per script with its timeout; the local pool), raw (the raw-tools route --raw compares
with), ray_backend (the same runs as Ray tasks), table (the rows and sweep.json / .md /
.html), compare (--compare OLD.json), progress (the console), cli (the command)."""
