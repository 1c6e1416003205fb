#!/bin/sh
# Entrypoint of the cfproxy container image: the conventions of the
# jupyterhub/configurable-http-proxy image (its chp-docker-entrypoint), so the
# image is a drop-in for CHP's in Helm charts and compose files.
#
#  * CONFIGPROXY_AUTH_TOKEN_FILE=<path>: the API token is read from that file
#    (trailing newlines dropped) into CONFIGPROXY_AUTH_TOKEN, and the _FILE
#    variable is unset. Setting both variables is an error (exit 1).
#  * Unless the arguments contain --api-ip or --api-socket, --api-ip=0.0.0.0 is
#    put first, so the REST API is reachable from the hub's container.
#  * Everything else is passed to `configurable-http-proxy` (cfproxy) unchanged,
#    which replaces this shell (exec): signals reach the proxy directly.
# POSIX sh: runs under dash, busybox sh and bash.
set -eu

file_env() {
    var="$1"
    file_var="${var}_FILE"
    eval "var_value=\${$var:-}"
    eval "file_var_value=\${$file_var:-}"
    if [ -n "$var_value" ] && [ -n "$file_var_value" ]; then
        echo "error: both $var and $file_var are set (but are exclusive)" >&2
        exit 1
    fi
    if [ -n "$file_var_value" ]; then
        if [ ! -r "$file_var_value" ] || [ -d "$file_var_value" ]; then
            echo "error: $file_var=$file_var_value is not a readable file" >&2
            exit 1
        fi
        val="$(cat "$file_var_value")"
        export "$var=$val"
    fi
    unset "$file_var"
}

file_env CONFIGPROXY_AUTH_TOKEN

api_address_given=no
for arg in "$@"; do
    case "$arg" in
        --api-ip | --api-ip=* | --api-socket | --api-socket=*) api_address_given=yes ;;
    esac
done

if [ "$api_address_given" = no ]; then
    exec configurable-http-proxy --api-ip=0.0.0.0 "$@"
fi
exec configurable-http-proxy "$@"
