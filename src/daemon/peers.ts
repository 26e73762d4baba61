// Builds the peer layer (src/p2p) for the daemon. Kept apart so that the daemon can run without it.

import type { PeerLayerFactory } from './daemon.js'

export const peerLayerFactory: PeerLayerFactory | undefined = undefined
