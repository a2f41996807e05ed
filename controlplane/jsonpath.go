package controlplane

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

// locateSpecError finds the field path of the first value in raw that does
// not fit md. protojson reports only a byte offset; users need to know which
// field of which object is wrong. It returns "" when it cannot tell.
func locateSpecError(md protoreflect.MessageDescriptor, raw []byte) (path, problem string) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "spec", "invalid json"
	}
	return walkMessage(md, v, "spec", 0)
}

// maxDepth bounds recursion on hostile input.
const maxDepth = 64

func walkMessage(md protoreflect.MessageDescriptor, v any, path string, depth int) (string, string) {
	if depth > maxDepth {
		return path, "nesting too deep"
	}
	if v == nil {
		return "", ""
	}
	if strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		if err := tryUnmarshal(md, v); err != nil {
			return path, cleanProtoError(err)
		}
		return "", ""
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return path, "want an object"
	}
	oneofs := map[protoreflect.FullName]string{}
	for _, k := range sortedKeys(obj) {
		fp := path + "." + k
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(k))
		}
		if fd == nil {
			return fp, "unknown field"
		}
		val := obj[k]
		if val == nil {
			continue
		}
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			if other, dup := oneofs[od.FullName()]; dup {
				return fp, fmt.Sprintf("only one of %s and %s may be set", other, k)
			}
			oneofs[od.FullName()] = k
		}
		switch {
		case fd.IsList():
			arr, ok := val.([]any)
			if !ok {
				return fp, "want a list"
			}
			for i, el := range arr {
				ep := fmt.Sprintf("%s[%d]", fp, i)
				if fd.Message() != nil {
					if p, pr := walkMessage(fd.Message(), el, ep, depth+1); p != "" {
						return p, pr
					}
				} else if err := tryField(md, fd, []any{el}); err != nil {
					return ep, cleanProtoError(err)
				}
			}
		case fd.IsMap():
			m, ok := val.(map[string]any)
			if !ok {
				return fp, "want an object"
			}
			for _, mk := range sortedKeys(m) {
				ep := fp + "[" + strconv.Quote(mk) + "]"
				if err := tryField(md, fd, map[string]any{mk: zeroFor(fd.MapValue())}); err != nil {
					return ep, "invalid key: " + cleanProtoError(err)
				}
				if fd.MapValue().Message() != nil {
					if p, pr := walkMessage(fd.MapValue().Message(), m[mk], ep, depth+1); p != "" {
						return p, pr
					}
				} else if err := tryField(md, fd, map[string]any{mk: m[mk]}); err != nil {
					return ep, cleanProtoError(err)
				}
			}
		case fd.Message() != nil:
			if p, pr := walkMessage(fd.Message(), val, fp, depth+1); p != "" {
				return p, pr
			}
		default:
			if err := tryField(md, fd, val); err != nil {
				return fp, cleanProtoError(err)
			}
		}
	}
	return "", ""
}

// zeroFor is a valid JSON value for a map value, used to check keys alone.
func zeroFor(fd protoreflect.FieldDescriptor) any {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return nil
	case protoreflect.StringKind, protoreflect.BytesKind:
		return ""
	case protoreflect.BoolKind:
		return false
	case protoreflect.EnumKind:
		return 0
	default:
		return 0
	}
}

func tryField(md protoreflect.MessageDescriptor, fd protoreflect.FieldDescriptor, v any) error {
	return tryUnmarshal(md, map[string]any{fd.JSONName(): v})
}

func tryUnmarshal(md protoreflect.MessageDescriptor, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return protojson.Unmarshal(b, dynamicpb.NewMessage(md))
}

func cleanProtoError(err error) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "proto:")
	msg = strings.TrimSpace(msg)
	// Drop the "(line 1:12):" position: it points into our re-encoding.
	if strings.HasPrefix(msg, "(line ") {
		if _, rest, ok := strings.Cut(msg, "):"); ok {
			msg = strings.TrimSpace(rest)
		}
	}
	return msg
}

// normalizeDurations rewrites Duration values written the Istio way
// ("500ms", "1m30s") into the seconds form protojson requires ("0.5s",
// "90s"). Values that do not parse are left for protojson to reject.
func normalizeDurations(md protoreflect.MessageDescriptor, raw []byte) []byte {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return raw
	}
	if !rewriteDurations(md, v, 0) {
		return raw
	}
	out, err := json.Marshal(v)
	if err != nil {
		return raw
	}
	return out
}

// rewriteDurations changes v in place and reports whether it changed.
func rewriteDurations(md protoreflect.MessageDescriptor, v any, depth int) bool {
	obj, ok := v.(map[string]any)
	if !ok || depth > maxDepth || strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return false
	}
	changed := false
	for k, val := range obj {
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(k))
		}
		if fd == nil || fd.Message() == nil {
			continue
		}
		sub := fd.Message()
		if fd.IsMap() {
			sub = fd.MapValue().Message()
			if sub == nil {
				continue
			}
		}
		isDuration := sub.FullName() == "google.protobuf.Duration"
		fix := func(x any) (any, bool) {
			if isDuration {
				if s, ok := x.(string); ok {
					if d, err := time.ParseDuration(s); err == nil {
						return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s", true
					}
				}
				return x, false
			}
			return x, rewriteDurations(sub, x, depth+1)
		}
		switch {
		case fd.IsList():
			if arr, ok := val.([]any); ok {
				for i := range arr {
					var c bool
					arr[i], c = fix(arr[i])
					changed = changed || c
				}
			}
		case fd.IsMap():
			if m, ok := val.(map[string]any); ok {
				for mk := range m {
					var c bool
					m[mk], c = fix(m[mk])
					changed = changed || c
				}
			}
		default:
			var c bool
			obj[k], c = fix(val)
			changed = changed || c
		}
	}
	return changed
}
