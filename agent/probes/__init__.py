"""The probe loader: the only package that imports bcc."""
