"""pushguard's daemon: the queue, the schedule, the pusher and the fleet."""

import warnings

# asyncssh 2.24 names cryptography's DSA classes in type aliases at import, and
# cryptography 51 deprecates DSA with a warning per name. asyncssh's default
# algorithms, which pushguard uses, leave DSA out, and the daemon's stderr is its
# log (one JSON record a line with --log-format json), so the warning is dropped
# here, before anything imports asyncssh.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh\.")
