"""Peer-to-peer layer: identity, signed wire records, transports and the supply view.

Only `p2p.libp2p_transport` imports libp2p; everything else here is usable from the
simulator, which never touches a socket.
"""
