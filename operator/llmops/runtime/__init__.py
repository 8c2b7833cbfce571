"""The generic controller runtime every kind plugs into (see controller.py), and
what Job-running kinds share: the Job lifecycle (joblife.py), the runner Job
skeleton (children.py) and how pods are read (pods.py)."""
