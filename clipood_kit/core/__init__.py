"""Layer 0: files (atomic JSON and safetensors writes), the feature cache and the keyed result store."""
