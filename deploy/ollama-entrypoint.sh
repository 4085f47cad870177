#!/usr/bin/env bash
# Ollama for docker-compose.yml: start the server, pull $OLLAMA_MODEL once (the models
# volume keeps it for later starts), then stay in the foreground with the server.
set -euo pipefail

MODEL="${OLLAMA_MODEL:-llama3.2:1b}"

ollama serve &
server=$!
# Stop the server with the container (docker stop sends SIGTERM to this script, PID 1).
trap 'kill -TERM "$server" 2>/dev/null; wait "$server"' TERM INT

# The image has no curl; `ollama list` fails until the server answers.
for _ in $(seq 1 60); do
  ollama list >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { echo "ollama-entrypoint: ollama serve exited" >&2; exit 1; }
  sleep 1
done
ollama list >/dev/null 2>&1 || { echo "ollama-entrypoint: server not up after 60 s" >&2; exit 1; }

if ollama show "$MODEL" >/dev/null 2>&1; then
  echo "ollama-entrypoint: $MODEL already present"
else
  echo "ollama-entrypoint: pulling $MODEL (first start only)"
  ollama pull "$MODEL"
fi

wait "$server"
