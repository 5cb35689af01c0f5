raise ImportError("recipes/ holds standalone scripts run with `accelerate launch recipes/<name>.py`; "
                  "they are not importable. Use the clipood package API instead.")
