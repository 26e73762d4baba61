// The peer source's view of the swarm (PeerDirectory): who can serve an image's blocks (parents first, from
// the candidates' adverts), and where failures and received bytes go.

import type { Manifest } from '../blockstack/manifest.js'
import { holdProbability } from './advert.js'
import type { PeerDirectory, SourceInfo } from './peer-source.js'
import { isFreshEntry, isSeed, type ImageState, type ServiceComponents } from './components.js'

/**
 * A VM's reads wait this many heartbeats (at least MIN_ATTACH_GRACE_MS) for the image's first parents before
 * other peers (the origin) are asked. With 1 s, 8 agents reading a whole image at once made the origin send
 * 2.1x the image (cluster test); with no wait, 2.8x (p2p cluster test).
 */
const ATTACH_GRACE_HEARTBEATS = 3
const MIN_ATTACH_GRACE_MS = 5000

export interface DirectoryInit {
  /** A parent failed a request: replace it. */
  scheduleHeartbeat: (state: ImageState) => void
  ban: (peerId: string, reason: string) => void
}

export const createDirectory = (init: DirectoryInit) => (components: ServiceComponents): PeerDirectory => {
  const { logger, byRoot, peers, events } = components
  return {
    sources (manifest: Manifest) {
      const state = byRoot.get(manifest.rootHex)
      if (state === undefined) return []
      const parentIds = new Set(state.parents.filter(p => !p.failed).map(p => p.peerId))
      const out: SourceInfo[] = []
      for (const [peerId, entry] of state.candidates) {
        if (entry.advert.rootHex !== manifest.rootHex || !components.connected.has(peerId)) continue
        const advert = entry.advert
        out.push({
          peerId,
          isParent: parentIds.has(peerId),
          holdProbability: index => holdProbability(advert, index),
          full: advert.childCount >= advert.childLimit || (advert.depth === 0 && !parentIds.has(peerId)),
          connectionEpoch: components.connectionEpochs.get(peerId),
          advertSeq: advert.seq
        })
      }
      return out
    },
    attaching (manifest) {
      const state = byRoot.get(manifest.rootHex)
      if (state === undefined || isSeed(state) || state.parents.some(p => !p.failed)) return false
      // The grace is for a first attach. An agent that lost its parents (its relay died) reads from the last
      // resort at once, within its budget: in a churn run the children of a killed relay, early in the wave,
      // waited out the grace counted from the image's start, 2.9 s with their own children waiting on them.
      if (state.attachedOnce) return false
      return components.clock.nowMs() - state.addedAtMs < Math.max(ATTACH_GRACE_HEARTBEATS * components.params.heartbeatMs, MIN_ATTACH_GRACE_MS)
    },
    canAttach (manifest) {
      const state = byRoot.get(manifest.rootHex)
      if (state === undefined) return false
      const nowMs = components.clock.nowMs()
      // A slot counts only if selection may take it (src/topology/select.ts, rule 4): an agent that advertises a
      // depth (attached, or an orphan holding its depth: topology/driver.ts) takes only shallower parents. In a
      // churn run the children of a killed relay held depth 2 for 2.6 s while the free slots were at depth 2
      // and deeper: counted as room, they held a VM's reads to the budget's one block a second (a 2.1 s read).
      const ownDepth = state.parents.some(p => !p.failed) || state.orphanedSinceMs !== null ? state.depth : null
      for (const [peerId, entry] of state.candidates) {
        const advert = entry.advert
        if (advert.rootHex !== manifest.rootHex || advert.depth === null || advert.childCount >= advert.childLimit) continue
        if (ownDepth !== null && advert.depth >= ownDepth) continue
        if (!isFreshEntry(entry, nowMs, components.params) || !components.connected.has(peerId) || peers.isBanned(peerId)) continue
        if ((state.refused.get(peerId) ?? -Infinity) > nowMs) continue
        return true
      }
      return false
    },
    link: peers.link,
    isBanned: peers.isBanned,
    reportFailed (manifest, peerId, err) {
      const state = byRoot.get(manifest.rootHex)
      const parent = state?.parents.find(p => p.peerId === peerId)
      logger.warn('block request failed', { image: manifest.imageId, peer: peerId, error: err.message })
      // A malformed response frame (the link closed on a WireDecodeError) is a protocol violation no honest
      // peer commits (noise would catch damage in transit): treated like a corrupt block. A request the peer
      // refused as malformed is our fault and arrives as a plain WireDecodeError, not as a link's cause.
      if ((err.cause as Error | undefined)?.name === 'WireDecodeError') {
        if (!peers.isBanned(peerId)) init.ban(peerId, `sent a malformed frame: ${(err.cause as Error).message}`)
        return
      }
      if (state !== undefined && parent !== undefined && !parent.failed && err.name !== 'PeerBusyError') {
        parent.failed = true
        init.scheduleHeartbeat(state)
      }
    },
    reportCorrupt (_manifest, peerId) {
      init.ban(peerId, 'served a corrupt block')
    },
    onReceived (manifest, peerId, bytes) {
      const state = byRoot.get(manifest.rootHex)
      if (state === undefined) return
      state.bytesReceived += bytes
      state.bytesReceivedByPeer.set(peerId, (state.bytesReceivedByPeer.get(peerId) ?? 0) + bytes)
    },
    async waitForSources (manifest, signal) {
      await events.nextSourcesChange(manifest.rootHex, signal)
    }
  }
}
