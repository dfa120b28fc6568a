# Type stub for the generated caffe_pb2.py (protoc builds its classes at import time, so a type
# checker sees none of them). Every name is Any: mypy checks the code that uses the messages, not
# the messages' fields. Regenerating caffe_pb2.py (make proto) needs no change here.
from typing import Any

def __getattr__(name: str) -> Any: ...
