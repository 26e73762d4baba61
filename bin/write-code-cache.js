#!/usr/bin/env node
// Writes the V8 code cache of each packaged bundle (load-bundle.js says why and how it is checked).
//   node bin/write-code-cache.js              after the build (scripts/bundle.mjs): a failure fails the build
//   node bin/write-code-cache.js --postinstall  npm's postinstall, with the node that will run the daemon: a
//                                               checkout without dist/ has nothing to do, and a failure only
//                                               warns (the daemon then compiles its bundle at each start)
// V8 accepts a cache only under the command-line flags it was written with: a bundle whose command runs node
// with flags (the daemon's AGENT_NODE_FLAGS, v8-flags.js) has its cache written by a child node started with them.
'use strict'
const { spawnSync } = require('node:child_process')
const { existsSync } = require('node:fs')
const { join } = require('node:path')
const { writeCodeCache } = require('./load-bundle.js')
const { AGENT_NODE_FLAGS } = require('./v8-flags.js')

/** Each bundle and the node flags its command runs with. */
const BUNDLES = { vmthunderd: AGENT_NODE_FLAGS, vmthunderctl: [] }
const postinstall = process.argv.includes('--postinstall')
const onlyAt = process.argv.indexOf('--only')
const only = onlyAt === -1 ? undefined : process.argv[onlyAt + 1]
/** The child's own warm-up is bounded (load-bundle.js); this bounds the child. */
const CHILD_TIMEOUT_MS = 120_000

function sameFlags (a, b) {
  return a.length === b.length && a.every((flag, i) => flag === b[i])
}

async function main () {
  for (const [name, flags] of Object.entries(BUNDLES)) {
    if (only !== undefined && name !== only) continue
    if (!sameFlags(process.execArgv, flags)) {
      const args = [...flags, __filename, '--only', name, ...(postinstall ? ['--postinstall'] : [])]
      const child = spawnSync(process.execPath, args, { stdio: 'inherit', timeout: CHILD_TIMEOUT_MS })
      if (child.status !== 0 && !postinstall) process.exit(1)
      continue
    }
    const bundle = join(__dirname, '..', 'dist', `${name}.cjs`)
    if (!existsSync(bundle)) {
      if (postinstall) continue
      process.stderr.write(`write-code-cache: ${bundle} is missing (npm run build makes it)\n`)
      process.exit(1)
    }
    try {
      const { cachePath, bytes, warmUpError } = await writeCodeCache(bundle)
      if (warmUpError !== undefined) {
        process.stderr.write(`write-code-cache: the warm-up of ${name} failed (${warmUpError.message}): its cache holds what loading it compiled, ` +
          'so it starts with more CPU\n')
      }
      if (!postinstall) process.stdout.write(`${cachePath}: ${(bytes / 1024 / 1024).toFixed(1)} MiB${warmUpError === undefined ? '' : ' (not warmed up)'}\n`)
    } catch (err) {
      process.stderr.write(`write-code-cache: cannot write the code cache of ${bundle}: ${err.message}\n`)
      if (!postinstall) process.exit(1)
      process.stderr.write('write-code-cache: vmthunderd works without it, but starts with more CPU\n')
    }
  }
}
// A warm-up that failed may have left a handle open: nothing else is to be done here.
main().then(() => process.exit(0), err => { process.stderr.write(`write-code-cache: ${err.stack}\n`); process.exit(1) })
