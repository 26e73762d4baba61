// Serves one export over NBD on a unix socket until SIGTERM/SIGINT; used by scripts/bench-nbd.sh and by hand.
//
//   node --import tsx scripts/bench-nbd-serve.ts --socket S --file F [--name N] [--sync-read-max BYTES] [--no-pool]
//   node --import tsx scripts/bench-nbd-serve.ts --socket S --export-module M.ts [--module-arg X]
//
// --export-module loads a module whose `createExport(arg: string | undefined)` resolves to an NbdExport
// (optionally with close()): that is how the bench is pointed at another export, e.g. the block cache.
// Prints "ready" on stdout once listening.

import { pathToFileURL } from 'node:url'
import { resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { createNbdServer, openFileExport, staticExportProvider, stderrLogger } from '../src/blockstack/nbd/index.js'
import type { NbdExport } from '../src/blockstack/types.js'

const { values } = parseArgs({
  options: {
    socket: { type: 'string' },
    file: { type: 'string' },
    name: { type: 'string', default: '' },
    'sync-read-max': { type: 'string', default: '0' },
    'no-pool': { type: 'boolean', default: false },
    'export-module': { type: 'string' },
    'module-arg': { type: 'string' }
  }
})

if (values.socket === undefined || (values.file === undefined) === (values['export-module'] === undefined)) {
  process.stderr.write('usage: bench-nbd-serve.ts --socket PATH (--file FILE | --export-module MODULE) [--name NAME]\n')
  process.exit(2)
}

type ClosableExport = NbdExport & { close?: () => Promise<void> }
let exp: ClosableExport
if (values.file !== undefined) {
  exp = await openFileExport(values.file, { name: values.name, syncReadMaxBytes: Number(values['sync-read-max']),
    pooledBuffers: !values['no-pool']
  })
} else {
  const mod = await import(pathToFileURL(resolve(values['export-module'] as string)).href) as {
    createExport: (arg: string | undefined) => Promise<ClosableExport>
  }
  exp = await mod.createExport(values['module-arg'])
}

const server = createNbdServer({ provider: staticExportProvider([exp]), logger: stderrLogger })
await server.listenUnix(values.socket)
process.stdout.write('ready\n')

let stopping = false
async function stop (): Promise<void> {
  if (stopping) return
  stopping = true
  await server.close()
  await exp.close?.()
  process.exit(0)
}
process.on('SIGTERM', () => { void stop() })
process.on('SIGINT', () => { void stop() })
