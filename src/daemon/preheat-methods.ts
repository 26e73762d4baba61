// JSON-RPC methods of cluster preheat (src/p2p/preheat.ts): kept beside methods.ts so that each file has one
// owner. image.preheat signs and publishes a request; image.preheat.status is the cluster's progress.

import { z } from 'zod'
import type { RpcMethod } from '../rpc/server.js'
import { InvalidParamsError } from '../rpc/errors.js'
import { PreheatNotStartedError } from '../p2p/preheat.js'
import type { PreheatClusterStatus, PreheatRequest } from '../rpc/types.js'
import type { Daemon } from './daemon.js'

const params = z.object({ id: z.string().min(1).max(64) }).strict()

function parseId (value: unknown): string {
  const result = params.safeParse(value ?? {})
  if (!result.success) {
    const issue = result.error.issues[0]
    throw new InvalidParamsError(`invalid params${issue.path.length === 0 ? '' : ` field '${issue.path.join('.')}'`}: ${issue.message}`)
  }
  return result.data.id
}

export function preheatMethods (getDaemon: () => Daemon): Record<string, RpcMethod> {
  const preheat = (): NonNullable<Daemon['preheat']> => {
    const p = getDaemon().preheat
    if (p === undefined) throw new PreheatNotStartedError('cluster preheat needs the peer layer, which is off on this agent')
    return p
  }
  return {
    'image.preheat': async (value, { signal }): Promise<PreheatRequest> => {
      const id = parseId(value)
      return await preheat().request(id, signal)
    },
    'image.preheat.status': async (value): Promise<PreheatClusterStatus> => preheat().clusterStatus(parseId(value))
  }
}
