#!/bin/sh
# The bisect of results/examples/bisect-kvm, as run.
set -u
cd /var/cache/kvmharness/bisect-src
git bisect reset >/dev/null 2>&1
good=$(git rev-list --max-parents=0 HEAD)
git bisect start main "$good"
start=$(date +%s)
PYTHONPATH=/tmp/patched-run2 git bisect run flock /tmp/kvmharness-boot.lock \
    /work/wt/patched/.venv/bin/python -m kvmharness bisect-step rom-toggle \
    --good "$good" --for 6.12.117+deb12-amd64 --quick --repeat 5 --variant zap=slot \
    --metric total --threshold 500% --out /tmp/patched-bisect/out
echo "bisect run exit $? after $(( $(date +%s) - start )) s"
git bisect log
