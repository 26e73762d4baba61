// Why a manifest could not be had. The peer layer retries peers until its caller gives up and logs each
// failure; this tap keeps the last one per image so instance.create can say why when its deadline passes
// (an untrusted origin key is 1040, not a silent wait).

import type { DaemonLogger } from './logger.js'

/** Images whose last failure is remembered; older entries are dropped first. */
const MAX_REMEMBERED_IMAGES = 64

export interface ManifestFailures {
  logger: DaemonLogger
  last: (imageId: string) => string | undefined
  forget: (imageId: string) => void
}

export function tapManifestFailures (logger: DaemonLogger): ManifestFailures {
  const failures = new Map<string, string>()
  const record = (message: string, fields?: Record<string, unknown>): void => {
    if (message !== 'manifest fetch failed' || typeof fields?.image !== 'string') return
    failures.delete(fields.image)
    failures.set(fields.image, String(fields.error))
    if (failures.size > MAX_REMEMBERED_IMAGES) failures.delete(failures.keys().next().value as string)
  }
  const wrap = (inner: DaemonLogger): DaemonLogger => ({
    debug: inner.debug,
    info: inner.info,
    warn: (message, fields) => { record(message, fields); inner.warn(message, fields) },
    error: inner.error,
    child: name => wrap(inner.child(name))
  })
  return { logger: wrap(logger), last: imageId => failures.get(imageId), forget: imageId => { failures.delete(imageId) } }
}

/** A failure that means the origin is not trusted here, or its manifest does not verify (1040, not 1041). */
export function isTrustFailure (message: string): boolean {
  return /not a trusted origin|signature does not verify|UntrustedOrigin|ManifestSignature/.test(message)
}
