// Parent side: whether to take one more child for an image. Fan-out is bounded by childLimit.

export interface AdmitInput {
  childCount: number
  childLimit: number
  /** A child asking again (reconnect, repeated request) keeps its slot. */
  isAlreadyChild: boolean
  /** The asker is banned or otherwise excluded by this agent. */
  isExcluded?: boolean
  /** Our own upload in use, 0..1; above maxUploadLoad new children are refused. */
  uploadLoad?: number
  maxUploadLoad?: number
  /** A detached agent (no parents, not a seed) cannot serve what it does not have: it refuses children. */
  selfDepth?: number | null
}

export type AdmitRefusal = 'full' | 'excluded' | 'overloaded' | 'detached'

export interface AdmitResult {
  admit: boolean
  reason?: AdmitRefusal
}

export function admitChild (input: AdmitInput): AdmitResult {
  if (input.isExcluded === true) return { admit: false, reason: 'excluded' }
  if (input.selfDepth === null) return { admit: false, reason: 'detached' }
  if (input.isAlreadyChild) return { admit: true }
  if (!(input.childCount < input.childLimit)) return { admit: false, reason: 'full' }
  if (input.uploadLoad !== undefined && input.maxUploadLoad !== undefined && input.uploadLoad > input.maxUploadLoad) {
    return { admit: false, reason: 'overloaded' }
  }
  return { admit: true }
}
