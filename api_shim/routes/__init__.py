"""The shim's routes, one router per resource; `api_shim.app` includes them all."""
