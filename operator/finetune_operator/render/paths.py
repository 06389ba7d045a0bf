"""Where things are inside a training pod: the contract between the rendered pod and the trainer."""

CONFIG_DIR = "/etc/finetune"
CONFIG_FILE = f"{CONFIG_DIR}/config.json"
PROGRESS_CA_KEY = "progress-ca.crt"
PROGRESS_CA_FILE = f"{CONFIG_DIR}/{PROGRESS_CA_KEY}"
PROGRESS_TOKEN_DIR = "/var/run/finetune/progress"  # noqa: S105 a directory name, not a password
PROGRESS_TOKEN_FILE = f"{PROGRESS_TOKEN_DIR}/token"
CREDENTIALS_DIR = "/var/run/finetune/credentials"  # one sub-directory per purpose: model, data, output
PVC_ROOT = "/mnt/pvc"  # pvc://claim/path is mounted at /mnt/pvc/claim/path
SCRATCH_DIR = "/scratch"  # writable: HOME, caches, local checkpoint staging
SHM_DIR = "/dev/shm"  # noqa: S108 the pod's memory-backed /dev/shm volume
