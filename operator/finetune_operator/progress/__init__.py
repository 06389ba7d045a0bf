"""The progress endpoint: trainer pods push progress over HTTPS, authenticated by a projected
ServiceAccount token, and the operator writes it into the FineTuneJob's status."""
