"""`dyff up` exactly, with the workloads of tests/attack/fake_workloads:
`python -m tests.attack.fake_up up ...`."""

import functools

import controller.executors.local as local

local.LocalExecutor = functools.partial(  # type: ignore[misc]
    local.LocalExecutor, package="tests.attack.fake_workloads"
)

if __name__ == "__main__":
    from dyff.cli import main

    main()
