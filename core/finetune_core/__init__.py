"""What the operator and the trainer share, so that neither copies the other's code.

The trainer image installs this package and the trainer, never the operator; the operator installs this
package and the operator, never torch. So nothing here imports either of them, and the modules that need
a heavy library (botocore for ``s3``) import it inside the functions that use it.

Public modules:
- ``api``: the pydantic models of the CRDs and of the trainer's configuration, the exit codes, the path
  checks (the CRDs in crds/ are generated from them);
- ``s3``: the one S3 client builder, its request policies and the credential keys a Secret may carry;
- ``endpoints``: which S3 endpoints a client may be pointed at (the allow-list check);
- ``uri``: file://, pvc://, s3:// and hf:// URIs parsed into their parts, hostile ones refused;
- ``log``: the JSON line format of both processes' logs.
"""
