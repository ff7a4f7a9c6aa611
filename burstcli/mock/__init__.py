"""The OpenAI-compatible rehearsal server (tests, `--simulate`, `burstq mock-server`).

state.py holds its configuration, counters and limits; live.py the chat, embeddings and models
endpoints; batches.py the Files and Batches API; slots.py a self-hosted server's N slots and
FIFO queue (`--slots`); server.py assembles the app and runs it.
May import: nothing of burstq outside mock/ (it stands in for a provider). The product imports
it only through run.simulated's one lazy import.
"""
