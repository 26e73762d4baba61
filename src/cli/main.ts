// vmthunderctl: the daemon's JSON-RPC methods from the shell. Tables for people, --json for scripts.
// Exit codes: 0 ok, 1 the daemon refused (error printed), 2 usage error, 3 cannot reach the daemon.

import { parseArgs } from 'node:util'
import { readFile, writeFile } from 'node:fs/promises'
import { resolve } from 'node:path'
import { callRpc, RpcConnectError, RpcTimeoutError } from '../rpc/client.js'
import { RpcError } from '../rpc/errors.js'
import { formatBytes, table } from './format.js'
import { waitReady, NotReadyError } from './wait-ready.js'
import { watchStatus } from './watch.js'
import { waitPreheat } from './preheat.js'
import { formatDuration } from './progress.js'
import { socketNames, writeSwarmSvg } from './swarm.js'
import { showRegisterProgress } from './register.js'
import type { ImagePrefetchStatus, ImageRegisterStatus, ImageSummary, InstanceCreated, InstanceEntry, NodeStatus, PreheatClusterStatus, PreheatRequest } from '../rpc/types.js'

export const EXIT_OK = 0
export const EXIT_REFUSED = 1
export const EXIT_USAGE = 2
export const EXIT_UNREACHABLE = 3

const USAGE = `usage: vmthunderctl [--socket PATH] [--json] COMMAND
commands:
  image register ID FILE [--block-size BYTES] [--interval-s S]
                                                register a raw image file; this host becomes its origin.
                                                A progress bar on stderr (a line per percent off a terminal)
  image list                                    images with their NBD URIs
  image remove ID                               refused while instances use it
  image preheat ID [--wait] [--timeout-s S]     ask every agent that trusts this one to pull the image in the
                                                background; --wait shows the cluster's progress and an ETA
  image profile export ID FILE                  write the image's learned boot profile (JSON)
  image profile import ID FILE                  merge a boot profile into the image's
  instance create NAME --image ID               make a copy-on-write overlay; prints its path
  instance destroy NAME [--force]               --force: even while a VM holds the overlay open
  instance list
  status [--watch [--interval-s 2] [--count N]]  this agent: peer id, images, parents, prefetch; --watch redraws
                                                it live with rates (Ctrl-C ends it)
  swarm --svg FILE [--image ID] [--count N --interval-s S] [--socket A --socket B ...]
                                                picture of the swarm as the agents of the sockets see it:
                                                who fetched from whom, bytes per peer, parents, depth over
                                                time, the origin's share; several sockets are merged
  wait-ready [--timeout-s S]                    return once the RPC and NBD sockets answer (systemd ExecStartPost)`

class UsageError extends Error {
  override name = 'UsageError'
}

const DEFAULT_SOCKET = process.env.VMTHUNDER_SOCKET ?? '/run/vmthunder/vmthunderd.sock'

export async function run (argv: string[], out: (text: string) => void, err: (text: string) => void): Promise<number> {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        // Repeatable for swarm (one picture from several agents); other commands take one.
        socket: { type: 'string', multiple: true },
        json: { type: 'boolean' },
        image: { type: 'string' },
        'block-size': { type: 'string' },
        force: { type: 'boolean' },
        'timeout-s': { type: 'string' },
        'interval-s': { type: 'string' },
        count: { type: 'string' },
        watch: { type: 'boolean' },
        svg: { type: 'string' },
        wait: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' }
      },
      allowPositionals: true,
      strict: true
    })
  } catch (e) {
    err(`vmthunderctl: ${(e as Error).message}\n${USAGE}\n`)
    return EXIT_USAGE
  }
  const { values, positionals } = parsed
  if (values.help === true || positionals.length === 0) {
    (values.help === true ? out : err)(USAGE + '\n')
    return values.help === true ? EXIT_OK : EXIT_USAGE
  }
  const sockets = values.socket ?? [DEFAULT_SOCKET]
  const socket = sockets[0]
  const json = values.json === true
  const call = async (method: string, params: Record<string, unknown> = {}): Promise<any> => await callRpc(socket, method, params)
  const print = (value: unknown, human: () => string): void => { out(json ? JSON.stringify(value, null, 2) + '\n' : human()) }
  try {
    const [noun, verb, ...rest] = positionals
    const need = (count: number, usage: string): string[] => {
      if (rest.length !== count) throw new UsageError(`usage: vmthunderctl ${usage}`)
      return rest
    }
    const command = `${noun} ${verb ?? ''}`.trim()
    if (sockets.length > 1 && command !== 'swarm') throw new UsageError('only swarm takes more than one --socket')
    switch (command) {
      case 'image register': {
        const [id, file] = need(2, 'image register ID FILE [--block-size BYTES] [--interval-s S]')
        const params: Record<string, unknown> = { id, path: resolve(file) }
        if (values['block-size'] !== undefined) {
          const size = Number(values['block-size'])
          if (!Number.isInteger(size)) throw new UsageError('--block-size takes a whole number of bytes')
          params.blockSizeBytes = size
        }
        const intervalS = Number(values['interval-s'] ?? (process.stderr.isTTY === true ? 0.25 : 1))
        if (!(intervalS >= 0.1)) throw new UsageError('--interval-s takes seconds (at least 0.1)')
        // The bar goes to stderr: stdout carries the result (and stays plain JSON with --json).
        const image: ImageSummary = await showRegisterProgress({
          register: call('image.register', params),
          status: async () => await callRpc(socket, 'image.register.status', { id }, { timeoutMs: 10_000 }) as ImageRegisterStatus,
          out: err,
          tty: process.stderr.isTTY === true,
          intervalMs: intervalS * 1000
        })
        print(image, () => `registered ${image.id}: ${formatBytes(image.sizeBytes)}, ${image.cache.blockCount} blocks of ${formatBytes(image.blockSizeBytes)}\nroot ${image.root}\nnbd  ${image.nbd}\n`)
        return EXIT_OK
      }
      case 'image list': {
        need(0, 'image list')
        const images: ImageSummary[] = await call('image.list')
        print(images, () => table(['ID', 'SIZE', 'HELD', 'ORIGIN', 'INSTANCES', 'NBD'], images.map(i => [
          i.id, formatBytes(i.sizeBytes), `${(i.heldFraction * 100).toFixed(1)}%`, i.origin ? 'yes' : 'no', String(i.instances.length), i.nbd
        ])))
        return EXIT_OK
      }
      case 'image remove': {
        const [id] = need(1, 'image remove ID')
        const result = await call('image.remove', { id })
        print(result, () => `removed ${id}\n`)
        return EXIT_OK
      }
      case 'image profile': {
        const [action, id, file] = rest
        if (rest.length !== 3 || (action !== 'export' && action !== 'import')) throw new UsageError('usage: vmthunderctl image profile export|import ID FILE')
        if (action === 'export') {
          const profile = await call('image.profile.export', { id })
          await writeFile(file, JSON.stringify(profile, null, 2) + '\n')
          print({ id, file, entries: profile.entries?.length ?? 0 }, () => `wrote the boot profile of ${id} to ${file} (${profile.entries?.length ?? 0} blocks)\n`)
        } else {
          let profile: unknown
          try {
            profile = JSON.parse(await readFile(file, 'utf8'))
          } catch (e) {
            throw new UsageError(`cannot read profile ${file}: ${(e as Error).message}`)
          }
          const result = await call('image.profile.import', { id, profile })
          print(result, () => `imported the profile into ${id}: ${result.entries} blocks from ${result.boots} boot(s)\n`)
        }
        return EXIT_OK
      }
      case 'instance create': {
        const [instance] = need(1, 'instance create NAME --image ID')
        if (values.image === undefined) throw new UsageError('usage: vmthunderctl instance create NAME --image ID')
        const result: InstanceCreated = await call('instance.create', { name: instance, image: values.image })
        print(result, () => `${result.path}\n`)
        return EXIT_OK
      }
      case 'instance destroy': {
        const [instance] = need(1, 'instance destroy NAME [--force]')
        const result = await call('instance.destroy', values.force === true ? { name: instance, force: true } : { name: instance })
        print(result, () => `destroyed ${instance}\n`)
        return EXIT_OK
      }
      case 'instance list': {
        need(0, 'instance list')
        const list: InstanceEntry[] = await call('instance.list')
        print(list, () => table(['NAME', 'IMAGE', 'WRITTEN', 'PATH'], list.map(i => [i.name, i.image, formatBytes(i.overlayBytes ?? 0), i.path])))
        return EXIT_OK
      }
      case 'status': {
        if (verb !== undefined) throw new UsageError('usage: vmthunderctl status [--watch [--interval-s S] [--count N]]')
        if (values.watch === true) {
          const intervalS = Number(values['interval-s'] ?? 2)
          const count = values.count === undefined ? Number.MAX_SAFE_INTEGER : Number(values.count)
          if (!(intervalS >= 0.1) || !Number.isInteger(count) || count < 1) throw new UsageError('--interval-s takes seconds (at least 0.1), --count a positive whole number')
          const stop = new AbortController()
          const onSignal = (): void => stop.abort()
          process.once('SIGINT', onSignal)
          try {
            await watchStatus({ status: async () => await call('node.status') as NodeStatus, out, intervalMs: intervalS * 1000, count, tty: process.stdout.isTTY === true && !json, signal: stop.signal })
          } finally {
            process.removeListener('SIGINT', onSignal)
          }
          return EXIT_OK
        }
        const status: NodeStatus = await call('node.status')
        print(status, () => formatStatus(status))
        return EXIT_OK
      }
      case 'image preheat': {
        const [id] = need(1, 'image preheat ID [--wait] [--timeout-s S]')
        const request: PreheatRequest = await call('image.preheat', { id })
        if (values.wait !== true) {
          print(request, () => `preheat of ${id} (root ${request.root.slice(0, 16)}) sent to ${request.subscribers} agent(s); watch it with --wait\n`)
          return EXIT_OK
        }
        if (!json) out(`preheat of ${id} (root ${request.root.slice(0, 16)}) sent to ${request.subscribers} agent(s)\n`)
        const timeoutS = Number(values['timeout-s'] ?? 3600)
        if (!(timeoutS > 0)) throw new UsageError('--timeout-s takes a positive number of seconds')
        const final = await waitPreheat({
          request,
          status: async () => await call('image.preheat.status', { id }) as PreheatClusterStatus,
          out: json ? () => {} : out,
          tty: process.stdout.isTTY === true && !json,
          intervalMs: 1000,
          timeoutMs: timeoutS * 1000
        })
        print({ request, status: final }, () => `${final.agents.filter(a => a.state === 'done').length} agent(s) hold ${id}\n`)
        return final.agents.some(a => a.state === 'failed') ? EXIT_REFUSED : EXIT_OK
      }
      case 'swarm': {
        if (verb !== undefined || values.svg === undefined) throw new UsageError('usage: vmthunderctl swarm --svg FILE [--image ID] [--count N --interval-s S] [--socket A --socket B ...]')
        const count = Number(values.count ?? 1)
        const intervalS = Number(values['interval-s'] ?? 1)
        if (!Number.isInteger(count) || count < 1 || count > 3600 || !(intervalS >= 0.1)) throw new UsageError('--count takes 1 to 3600, --interval-s at least 0.1')
        const names = socketNames(sockets)
        const sources = sockets.map((path, i) => ({ name: names[i], status: async () => await callRpc(path, 'node.status') as NodeStatus }))
        const result = await writeSwarmSvg({ sources, file: values.svg, imageId: values.image, count, intervalMs: intervalS * 1000 })
        print({ file: values.svg, ...result }, () => `wrote ${values.svg}: ${result.imageId}, ${result.samples} sample(s), ${result.agents} agent(s), ${result.edges} edge(s)\n`)
        return EXIT_OK
      }
      case 'wait-ready': {
        if (verb !== undefined) throw new UsageError('usage: vmthunderctl wait-ready [--timeout-s S]')
        const timeoutS = Number(values['timeout-s'] ?? 60)
        if (!(timeoutS > 0)) throw new UsageError('--timeout-s takes a positive number of seconds')
        const status = await waitReady(socket, { timeoutMs: timeoutS * 1000 })
        print({ ready: true, socket: status.socket, nbdSocket: status.nbdSocket }, () => `ready: ${status.socket}, ${status.nbdSocket}\n`)
        return EXIT_OK
      }
      default:
        throw new UsageError(`unknown command '${positionals.join(' ')}'\n${USAGE}`)
    }
  } catch (e) {
    if (e instanceof UsageError) {
      err(`vmthunderctl: ${e.message}\n`)
      return EXIT_USAGE
    }
    if (e instanceof RpcConnectError || e instanceof RpcTimeoutError || e instanceof NotReadyError) {
      err(`vmthunderctl: ${e.message}\n`)
      return EXIT_UNREACHABLE
    }
    if (e instanceof RpcError) {
      if (json) out(JSON.stringify({ error: { code: e.code, message: e.message, data: e.data } }, null, 2) + '\n')
      err(`vmthunderctl: ${e.message} (code ${e.code})\n`)
      return EXIT_REFUSED
    }
    err(`vmthunderctl: ${(e as Error).message}\n`)
    return EXIT_REFUSED
  }
}

function formatStatus (s: NodeStatus): string {
  const lines = [
    `peer id     ${s.peerId}`,
    `public key  ${s.publicKey}`,
    `uptime      ${(s.uptimeMs / 1000).toFixed(0)} s`,
    `rpc socket  ${s.socket}`,
    `nbd socket  ${s.nbdSocket}`,
    `listen      ${(s.listenAddrs ?? []).join(' ') || '-'}`,
    `peers       ${s.p2p?.enabled === true ? (s.p2p.peers ?? 0) : 'p2p off'}`,
    `instances   ${s.instances}`,
    ''
  ]
  const rows = Object.values(s.images ?? {}).map(i => [
    i.id,
    `${(i.heldFraction * 100).toFixed(1)}%`,
    i.depth === undefined || i.depth === null ? (i.seed === true ? '0' : '-') : String(i.depth),
    (i.parents ?? []).map(p => p.slice(-8)).join(',') || '-',
    String(Array.isArray(i.children) ? i.children.length : (i.children ?? 0)),
    formatBytes(i.bytesReceived ?? i.cache?.fetchedBytes ?? 0),
    formatBytes(i.bytesSent ?? 0),
    formatPrefetch(i.prefetch),
    formatProfile(i.prefetch)
  ])
  return lines.join('\n') + table(['IMAGE', 'HELD', 'DEPTH', 'PARENTS', 'CHILDREN', 'RECEIVED', 'SENT', 'PREFETCH', 'PROFILE'], rows)
}

/** Prefetch progress: mode, bytes prefetched, blocks still missing, ETA; e.g. "idle 12.0 MiB, 3,200 blocks left, eta 4s". */
function formatPrefetch (p: ImagePrefetchStatus | undefined): string {
  if (p === undefined || p === null) return '-'
  const bytes = formatBytes(p.prefetchedBytes ?? p.bytesFetched ?? 0)
  if (p.mode === 'done' || p.blocksRemaining === 0) return `done (${bytes})`
  const left = `${Number(p.blocksRemaining ?? 0).toLocaleString('en-US')} blocks left`
  const eta = p.etaMs === undefined || p.etaMs === null ? '' : `, eta ${formatDuration(p.etaMs)}`
  return `${p.mode ?? '-'} ${bytes}, ${left}${eta}`
}

/** The boot profile: boots merged, blocks listed, and the share of reads that found their blocks local. */
function formatProfile (p: ImagePrefetchStatus | undefined): string {
  if (p === undefined || p === null) return '-'
  const reads = (p.readsLocal ?? 0) + (p.readsFetched ?? 0)
  const local = reads === 0 ? '' : `, ${((p.readsLocal ?? 0) * 100 / reads).toFixed(0)}% reads local`
  return (p.profileBoots ?? 0) === 0 ? `none${local}` : `${p.profileBoots} boot(s), ${p.profileEntries} blocks${local}`
}

/** The command: bin/entry.js calls it (loading this module runs nothing, as for the daemon's main.ts). */
export async function main (argv: string[]): Promise<number> {
  return await run(argv, t => process.stdout.write(t), t => process.stderr.write(t))
}
