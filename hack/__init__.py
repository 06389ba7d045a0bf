"""Development tools, never shipped in an image: the test control plane (localcluster), the local node
agent (nodeagent), tiny test models (tinymodels), and the cluster and demo commands.

A package so that tests, benchmarks and these commands import it as ``hack.*`` from the repository
root (``python -m hack.demo up``), with nothing edited on sys.path.
"""
