// Builds the peer layer (src/p2p) from the daemon's config. Kept apart so that the daemon runs without it.

import '../polyfill.js'
import { createP2PService } from '../p2p/service.js'
import type { PeerLayerFactory } from './daemon.js'
import { testServedStoreLayer } from './test-faults.js'

export const peerLayerFactory: PeerLayerFactory = async ({ config, identity, trustedKeys, logger, profiles, beat }) => {
  const p2p = config.p2p
  // Undefined in production; hostile-peer tests only (test-faults.ts), and it throws without the env gate.
  const servedLayer = testServedStoreLayer()
  if (servedLayer !== undefined) logger.warn('serving peers through a test fault layer', {})
  const service = createP2PService({
    identity,
    listen: p2p.listen,
    bootstrap: p2p.bootstrap,
    pskFile: p2p.psk ?? undefined,
    encryption: p2p.encryption,
    dataChannel: p2p.dataChannelPort === null ? false : { port: p2p.dataChannelPort },
    trustedKeys,
    heartbeatMs: p2p.heartbeatMs,
    beat,
    topologyParams: { parentCount: p2p.parents, childLimit: p2p.childLimit, soleChildLimit: p2p.soleChildLimit, heartbeatMs: p2p.heartbeatMs },
    childLimit: p2p.childLimit,
    peerExchangeTarget: p2p.peerExchangeTarget,
    catalogManifests: p2p.catalogManifests,
    uploadLimitBytesPerSec: p2p.uploadLimitBytesPerSec ?? undefined,
    downloadLimitBytesPerSec: p2p.downloadLimitBytesPerSec ?? undefined,
    // Many agents share one address in tests and on one host; gossipsub's colocation penalty would starve them.
    ipColocationPenalty: false,
    logger,
    profiles
  })
  return {
    blockSource: service.blockSource,
    start: async () => { await service.start() },
    stop: async () => { await service.stop() },
    addImage: (cache, options) => { service.addImage(servedLayer?.(cache) ?? cache, options) },
    removeImage: imageId => { service.removeImage(imageId) },
    fetchManifest: async (imageId, options) => await service.fetchManifest(imageId, options),
    status: () => { const status = service.status(); return { ...status, peers: status.peers.length } },
    profileChanged: imageId => { service.profileChanged(imageId) },
    node: () => service.node(),
    peersBooting: imageId => service.peersBooting(imageId)
  }
}
