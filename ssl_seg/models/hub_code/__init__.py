"""Model code that ``ssl-seg export`` ships inside a model folder, for transformers' ``trust_remote_code``:
each file imports only torch and transformers, so it runs where ssl_seg is not installed."""
