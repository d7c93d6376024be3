#!/bin/sh
# Installs the cron deployment (docs/operations.md, "cron"). Run as root from the repository root,
# after the virtualenv at /opt/thingspace-sms-sync exists. Safe to run again (keeps an edited env).
#   RUN_USER  the account the cron line runs as (default thingspace-sync: created as a system user,
#             not a login; plain `sync` is a system account of Debian with another purpose)
#   DESTDIR   install under another root (tests); the user is still created in the real system
set -eu
RUN_USER="${RUN_USER:-thingspace-sync}"
DESTDIR="${DESTDIR:-}"

if ! getent passwd "$RUN_USER" >/dev/null; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$RUN_USER"
fi
# Configuration and secrets: owned by root, readable by the run user's group only.
install -d -m 0750 -o root -g "$RUN_USER" "$DESTDIR/etc/thingspace-sms-sync"
install -d -m 0750 -o root -g "$RUN_USER" "$DESTDIR/etc/thingspace-sms-sync/credentials"
if [ ! -e "$DESTDIR/etc/thingspace-sms-sync/env" ]; then
    install -m 0640 -o root -g "$RUN_USER" deploy/systemd/thingspace-sms-sync.env.example \
        "$DESTDIR/etc/thingspace-sms-sync/env"
fi
# The log (and the flock lock file) belong to the run user.
install -d -m 0750 -o "$RUN_USER" -g "$RUN_USER" "$DESTDIR/var/log/thingspace-sms-sync"
# No dot in the name: cron ignores files in /etc/cron.d whose names contain one (run-parts rules).
install -d -m 0755 "$DESTDIR/etc/cron.d"
sed "s/ thingspace-sync flock / $RUN_USER flock /" deploy/cron/thingspace-sms-sync.cron \
    >"$DESTDIR/etc/cron.d/thingspace-sms-sync"
chmod 0644 "$DESTDIR/etc/cron.d/thingspace-sms-sync"
echo "installed; now write the two secrets (mode 0440, group $RUN_USER) and edit the env file:" >&2
echo "  install -m 0440 -o root -g $RUN_USER /dev/stdin $DESTDIR/etc/thingspace-sms-sync/credentials/password" >&2
echo "  install -m 0440 -o root -g $RUN_USER /dev/stdin $DESTDIR/etc/thingspace-sms-sync/credentials/client-secret" >&2
