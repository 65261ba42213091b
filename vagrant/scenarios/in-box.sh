#!/bin/sh
# In a provisioned Vagrant box, as root: replay every scenario against the installed agent (foreground, the
# installed config) and judge the running systemd service's alerts too; results go to the synced folder,
# /chainwatch/vagrant/results/<box>/ on the host: verdicts.json, alerts.jsonl, recording.cw, agent.log,
# service-alerts.jsonl, service-status.txt, service-journal.txt.
set -eu
name=${1:-$(hostname | sed 's/^cw-//')}
out=/chainwatch/vagrant/results/$name
rm -rf "$out"
mkdir -p "$out"
systemctl status chainwatch --no-pager > "$out/service-status.txt" 2>&1 || true
rc=0
python3 /chainwatch/vagrant/scenarios/run.py --out "$out" --chainwatch /usr/bin/chainwatch \
    --config /etc/chainwatch/chainwatch.toml --service-alerts /var/log/chainwatch/alerts.jsonl || rc=$?
journalctl -u chainwatch --no-pager -n 300 > "$out/service-journal.txt" 2>&1 || true
exit "$rc"
