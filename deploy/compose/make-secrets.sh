#!/usr/bin/env bash
# Writes the compose stack's secrets as files (mode 600) under secrets/: a random Redis
# password for the job's user and the ACL file Redis loads (the default user off).
# Existing files are kept, so re-running never rotates a password under a running stack.
set -euo pipefail
cd "$(dirname "$0")/secrets"
umask 077
[[ -s redis-username ]] || printf 'medimg' > redis-username
[[ -s redis-password ]] || head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > redis-password
if [[ ! -s redis-users.acl ]]; then
  printf 'user default off\nuser %s on >%s ~* &* +@all\n' \
    "$(cat redis-username)" "$(cat redis-password)" > redis-users.acl
fi
# The folder stays private to its owner; the files are bind-mounted into containers whose
# users (Redis 999, the job 10001) must read them.
chmod 700 .
chmod 644 redis-username redis-password redis-users.acl
echo "secrets in $(pwd)"
