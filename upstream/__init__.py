"""Client-side load balancing, used by the facade alone: the discovery watch (watch.py), the balancing
policies and their live setting (balancing.py), outlier ejection (outliers.py), the retry budget
(retry_budget.py) and the caller that puts them together (caller.py)."""
