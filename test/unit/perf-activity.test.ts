// The perf sample classifier of `bench:testbed -- --perf` (scripts/lib/perf-activity.ts), on perf script text
// shaped as `perf script -F pid,tid,ip,sym,dso` prints it.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { activityOf, jsFunctionOf, OTHER_ACTIVITY } from '../../scripts/lib/perf-activity.js'

const sample = (pid: number, frames: Array<[string, string]>): string =>
  [`    ${pid}/${pid + 1}     `, ...frames.map(([sym, dso]) => `\t    7f00deadbeef ${sym} (${dso})`), ''].join('\n')

const NODE = '/usr/bin/node'

test('samples count once, for the first activity any frame matches; other pids are left out', () => {
  const text = [
    sample(10, [['v8::internal::compiler::GraphReducer::ReduceTop()', NODE], ['v8::internal::Heap::CollectGarbage', NODE]]),
    sample(10, [['v8::internal::ConcurrentMarking::RunMajor', NODE]]),
    sample(10, [['Builtins_LoadIC', NODE], ['JS:*read file:///x/dist/vmthunderd.cjs:12:3', '/tmp/perf-10.map']]),
    sample(10, [['sha256_block_data_order_shaext', NODE]]),
    sample(10, [['copy_folio_from_iter_atomic', '[kernel.kallsyms]'], ['__libc_writev', '/usr/lib/x86_64-linux-gnu/libc.so.6']]),
    sample(10, [['JS:*onFrame file:///x/dist/vmthunderd.cjs:9:1', '/tmp/perf-10.map']]),
    sample(99, [['v8::internal::compiler::Pipeline', NODE]])
  ].join('\n')
  const { samples, byGroup } = activityOf(text, new Set([10]))
  assert.equal(samples, 6)
  assert.equal(byGroup.get('V8 optimizing compiler (TurboFan)'), 1)
  assert.equal(byGroup.get('garbage collection'), 1)
  assert.equal(byGroup.get('not yet optimized JS (interpreter/baseline inline caches)'), 1)
  assert.equal(byGroup.get('crypto (OpenSSL: ChaCha20, SHA-256, Ed25519)'), 1)
  assert.equal(byGroup.get('kernel'), 1)
  assert.equal(byGroup.get(OTHER_ACTIVITY), 1)
  assert.equal(activityOf(text).samples, 7)
})

test('empty or garbled input counts nothing', () => {
  assert.equal(activityOf('').samples, 0)
  assert.equal(activityOf('not perf output\n\n  12 x\n').samples, 0)
})

test('JIT frame names shorten to function and file:line; other symbols are not JavaScript', () => {
  assert.equal(jsFunctionOf('JS:*consume file:///w/node_modules/uint8arraylist/dist/src/index.js:226:12'), 'consume uint8arraylist/dist/src/index.js:226')
  assert.equal(jsFunctionOf('JS:~read file:///opt/vmthunderd/dist/vmthunderd.cjs:123:4567'), 'read dist/vmthunderd.cjs:123')
  assert.equal(jsFunctionOf('JS:~ node:internal/streams/readable:1:2'), '(anonymous) node:streams/readable:1')
  assert.equal(jsFunctionOf('Builtins_LoadIC'), undefined)
  const text = sample(10, [['Builtins_LoadIC', NODE], ['JS:~onFrame file:///x/dist/vmthunderd.cjs:9:1', '/tmp/perf-10.map'], ['JS:*outer file:///x/dist/vmthunderd.cjs:2:1', '/tmp/perf-10.map']])
  assert.deepEqual([...activityOf(text).byJsFunction], [['onFrame dist/vmthunderd.cjs:9', 1]])
})
