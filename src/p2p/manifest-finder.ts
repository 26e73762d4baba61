// Finding an image's signed manifest: ask the peers that advertise it (shallowest first, bounded), waiting
// for adverts when none is known yet. Registers interest in the image's topic meanwhile.

import { peerIdFromString } from '@libp2p/peer-id'
import type { Manifest } from '../blockstack/manifest.js'
import { fetchManifestFrom, MANIFEST_FETCH_TIMEOUT_MS } from './manifest-protocol.js'
import { ManifestUnavailableError } from './errors.js'
import type { ImageState, ServiceComponents } from './components.js'

const MAX_MANIFEST_PEERS_TRIED = 16

export interface ManifestFinderInit {
  trustedKeys: readonly Uint8Array[]
  /** The image's state, subscribing to its topic (interest only) if new. */
  ensureState: (imageId: string) => ImageState
  /** Interest only ended: unsubscribe and forget the image. */
  dropInterest: (state: ImageState) => void
}

export type FetchManifestFn = (imageId: string, options: { signal: AbortSignal }) => Promise<Manifest>

export const createManifestFinder = (init: ManifestFinderInit) => (components: ServiceComponents): FetchManifestFn => {
  const { logger, images, peers, events } = components
  return async (imageId, options) => {
    const existing = images.get(imageId)
    if (existing?.manifest !== undefined) return existing.manifest
    const state = init.ensureState(imageId)
    const signal = AbortSignal.any([options.signal, components.stopSignal])
    const tried = new Set<string>()
    const startMs = performance.now()
    let lastError: Error | undefined
    try {
      while (tried.size < MAX_MANIFEST_PEERS_TRIED) {
        if (state.manifest !== undefined) return state.manifest
        const candidates = [...state.candidates.entries()]
          .filter(([peer, entry]) => entry.advert.manifestAvailable && !tried.has(peer) && !peers.isBanned(peer))
          .sort(([, a], [, b]) => (a.advert.depth ?? 255) - (b.advert.depth ?? 255))
        if (candidates.length === 0) {
          await events.next(signal)
          continue
        }
        const [peer] = candidates[0]
        tried.add(peer)
        const askedMs = performance.now()
        try {
          const manifest = await fetchManifestFrom(components.requireNode(), peerIdFromString(peer), imageId, init.trustedKeys,
            AbortSignal.any([signal, AbortSignal.timeout(MANIFEST_FETCH_TIMEOUT_MS)]))
          if (manifest.rootHex !== state.candidates.get(peer)?.advert.rootHex) logger.warn('manifest root differs from the advert', { image: imageId, peer })
          // How long a new image's first instance waited for an advert naming a holder, and for the manifest.
          logger.info('manifest fetched', { image: imageId, peer, waitMs: Math.round(askedMs - startMs), fetchMs: Math.round(performance.now() - askedMs) })
          return manifest
        } catch (err) {
          if (signal.aborted) throw err
          lastError = err as Error
          logger.warn('manifest fetch failed', { image: imageId, peer, error: lastError.message })
        }
      }
      throw new ManifestUnavailableError(`no peer gave a valid manifest for ${imageId}${lastError !== undefined ? `: ${lastError.message}` : ''}`)
    } finally {
      // Interest only: stop listening unless the image was added meanwhile.
      if (state.interestOnly && images.get(imageId) === state && state.store === undefined) init.dropInterest(state)
    }
  }
}
