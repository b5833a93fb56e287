package redisservice

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// binaryValue is an encoding.BinaryMarshaler, which go-redis writes as
// the bytes it returns.
type binaryValue struct{ fail bool }

func (v binaryValue) MarshalBinary() ([]byte, error) {
	if v.fail {
		return nil, errors.New("cannot marshal")
	}
	return []byte("bin"), nil
}

type namedString string

// TestUnwritableValuesAreRefused: a value go-redis cannot write fails with
// ErrInvalidArgument before anything is sent, writes nothing, and says
// nothing about the connection.
func TestUnwritableValuesAreRefused(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		bad := map[string]any{
			"struct":            struct{ A int }{},
			"pointer to struct": &struct{ A int }{},
			"map":               map[string]int{"a": 1},
			"slice of ints":     []int{1},
			"named string":      namedString("x"),
			"failing marshaler": binaryValue{fail: true},
		}
		for name, v := range bad {
			_, err := s.Set(ctx, "k", v)
			assert.ErrorIs(t, err, ErrInvalidArgument, "Set(%s)", name)
			err = s.HSet(ctx, "h", "f", v)
			assert.ErrorIs(t, err, ErrInvalidArgument, "HSet(%s)", name)
			err = s.MSet(ctx, map[string]any{"a": "fine", "b": v})
			assert.ErrorIs(t, err, ErrInvalidArgument, "MSet(%s)", name)
			err = s.MSet(ctx, map[string]any{"a": "fine", "b": v}, WithTTL(time.Minute))
			assert.ErrorIs(t, err, ErrInvalidArgument, "MSet(%s) with a TTL", name)
		}
		for _, k := range []string{"k", "h", "a", "b"} {
			assert.Zero(t, b.client.Exists(ctx, b.raw(k)).Val(), "%s written by a refused call", k)
		}
		assert.True(t, s.IsConnected(), "IsConnected after unwritable values")
		assert.Zero(t, s.Stats().Errors, "invalid arguments counted as Redis failures")
		_, err := s.Set(ctx, "k", "v")
		require.NoError(t, err, "Set after unwritable values")

		good := map[string]struct {
			v    any
			want string
		}{
			"string":    {"s", "s"},
			"bytes":     {[]byte("b"), "b"},
			"int":       {42, "42"},
			"uint8":     {uint8(7), "7"},
			"float":     {1.5, "1.5"},
			"bool":      {true, "1"},
			"nil":       {nil, ""},
			"duration":  {time.Second, "1000000000"},
			"time":      {time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), "2026-01-02T03:04:05Z"},
			"marshaler": {binaryValue{}, "bin"},
			"*string":   {new(string), ""},
		}
		for name, c := range good {
			_, err := s.Set(ctx, "good", c.v)
			require.NoError(t, err, "Set(%s)", name)
			assert.Equal(t, c.want, b.client.Get(ctx, b.raw("good")).Val(), "Set(%s)", name)
			require.NoError(t, s.HSet(ctx, "goodh", "f", c.v), "HSet(%s)", name)
			assert.Equal(t, c.want, b.client.HGet(ctx, b.raw("goodh"), "f").Val(), "HSet(%s)", name)
			require.NoError(t, s.MSet(ctx, map[string]any{"good": c.v}), "MSet(%s)", name)
			assert.Equal(t, c.want, b.client.Get(ctx, b.raw("good")).Val(), "MSet(%s)", name)
		}
	})
}

// TestAutoPipelineUnwritableValueFailsNoOneElse: with AutoPipeline,
// commands of concurrent callers share one write; one caller's value that
// go-redis cannot write, or one caller's command that Redis refuses
// (WRONGTYPE), must not fail the others.
func TestAutoPipelineUnwritableValueFailsNoOneElse(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{AutoPipeline: true, Timeout: 5 * time.Second})
		require.NotNil(t, s.ap, "the Service has no autopipeliner")
		ctx := ctxT(t)

		require.NoError(t, b.client.Set(ctx, b.raw("wrong"), "x", 0).Err())
		const callers, perCaller = 64, 50
		var innocent atomic.Int64
		var firstOnce sync.Once
		var first error // set once; read after every goroutine ended
		record := func(err error) { firstOnce.Do(func() { first = err }) }
		var wg sync.WaitGroup
		stop := make(chan struct{})
		poisoned := make(chan int64)
		go func() {
			var n int64
			defer func() { poisoned <- n }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := s.Set(ctx, "poison", struct{ A int }{})
				if !errors.Is(err, ErrInvalidArgument) {
					record(fmt.Errorf("poisoning Set = %v; want ErrInvalidArgument", err))
				}
				if _, _, err := s.HGet(ctx, "wrong", "f"); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
					record(fmt.Errorf("HGet of a string = %v; want WRONGTYPE", err))
				}
				n++
				time.Sleep(100 * time.Microsecond)
			}
		}()
		for g := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perCaller {
					key := fmt.Sprintf("innocent:%d:%d", g, i)
					if _, err := s.Set(ctx, key, "v"); err != nil {
						innocent.Add(1)
						record(fmt.Errorf("Set(%s): %w", key, err))
						continue
					}
					if v, found, err := s.Get(ctx, key); err != nil || !found || v != "v" {
						innocent.Add(1)
						record(fmt.Errorf("Get(%s) = %q, %v, %v", key, v, found, err))
					}
				}
			}()
		}
		wg.Wait()
		close(stop)
		n := <-poisoned
		assert.Positive(t, n, "poisoning Sets made")
		assert.Zero(t, innocent.Load(), "innocent calls failed among %d; first: %v", 2*callers*perCaller, first)
		assert.NoError(t, first)
		assert.True(t, s.IsConnected())
		assert.Zero(t, b.client.Exists(ctx, b.raw("poison")).Val())
	})
}

// TestMarshalErrorIsNotAConnectionError: go-redis's own error for a value
// it cannot write is the caller's mistake, not a connection failure.
func TestMarshalErrorIsNotAConnectionError(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	err := b.client.Set(ctxT(t), "k", struct{ A int }{}, 0).Err()
	require.ErrorContains(t, err, "can't marshal")
	assert.False(t, isConnError(err), "isConnError(%v)", err)
	assert.False(t, isConnError(invalid("set", "k", ErrInvalidArgument)))
	assert.True(t, isConnError(context.DeadlineExceeded))
}
