// Command gotemplate renders an Ollama chat TEMPLATE for one conversation, with the
// conventions of Ollama's template package: the template is parsed with function
// checks skipped and executed with missingkey=zero; .System joins every system
// message with a blank line; .Messages holds the conversation with consecutive
// messages of the same role merged; .Response is empty.
//
// Usage: gotemplate TEMPLATE_FILE < conversations.json
//
// stdin holds a JSON list of conversations (each a list of {role, content}); stdout
// gets a JSON list with the rendered text of each. A template that does not parse
// exits with status 1 and the parser's message on stderr.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func collate(messages []Message) (string, []*Message) {
	var system []string
	var merged []*Message
	for i := range messages {
		m := messages[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if n := len(merged); n > 0 && merged[n-1].Role == m.Role {
			merged[n-1].Content += "\n\n" + m.Content
		} else {
			merged = append(merged, &m)
		}
	}
	return strings.Join(system, "\n\n"), merged
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gotemplate TEMPLATE_FILE < conversations.json")
		os.Exit(2)
	}
	source, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var conversations [][]Message
	if err := json.NewDecoder(os.Stdin).Decode(&conversations); err != nil {
		fmt.Fprintln(os.Stderr, "conversations:", err)
		os.Exit(2)
	}
	tree := parse.New("")
	tree.Mode = tree.Mode | parse.SkipFuncCheck
	tree, err = tree.Parse(string(source), "", "", map[string]*parse.Tree{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "parse:", err)
		os.Exit(1)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).AddParseTree("", tree)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template:", err)
		os.Exit(1)
	}
	rendered := []string{}
	for _, messages := range conversations {
		system, collated := collate(messages)
		values := map[string]any{"System": system, "Messages": collated, "Response": ""}
		var out strings.Builder
		if err := tmpl.Execute(&out, values); err != nil {
			fmt.Fprintln(os.Stderr, "execute:", err)
			os.Exit(1)
		}
		rendered = append(rendered, out.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(rendered); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
